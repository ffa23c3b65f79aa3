//! What both simulators' trade statements share (`/work/notes/statement-layout.md`): the
//! China day asked for, fees, money and rate text, the files kept for download behind
//! opaque tokens, gzip, SHA-1 and the zip of GBK-named files.
//!
//! A statement lists the account's payments paid during the China calendar day (by payment
//! time) and its refunds that succeeded during it; any day up to today (China time) is
//! served — today's as it stands so far —, a later one is refused as not generated.

use std::collections::VecDeque;
use std::io::{Cursor, Write};
use std::sync::Mutex;

use bytes::Bytes;
use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime, UtcOffset};

use crate::domain::{yuan, FeeRate};

/// Statement files kept for download at once; the oldest goes first.
const KEPT_FILES: usize = 256;

/// China Standard Time, which both providers' days are in.
fn china() -> UtcOffset {
    UtcOffset::from_hms(8, 0, 0).unwrap_or(UtcOffset::UTC)
}

/// Today in China.
pub(super) fn china_today() -> Date {
    OffsetDateTime::now_utc().to_offset(china()).date()
}

/// Why a `bill_date` is not served.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum BadDay {
    /// Not `YYYY-MM-DD`, or no such date.
    Malformed,
    /// After today (China time): no statement yet.
    Future,
}

/// A `bill_date` (`YYYY-MM-DD`, exactly) of a day whose statement exists: up to today.
pub(super) fn statement_day(text: &str) -> Result<Date, BadDay> {
    let b = text.as_bytes();
    let shaped = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shaped {
        return Err(BadDay::Malformed);
    }
    let num = |r: std::ops::Range<usize>| text[r].parse::<u16>().map_err(|_| BadDay::Malformed);
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let month = time::Month::try_from(u8::try_from(month).map_err(|_| BadDay::Malformed)?)
        .map_err(|_| BadDay::Malformed)?;
    let date = Date::from_calendar_date(
        i32::from(year),
        month,
        u8::try_from(day).map_err(|_| BadDay::Malformed)?,
    )
    .map_err(|_| BadDay::Malformed)?;
    if date > china_today() {
        return Err(BadDay::Future);
    }
    Ok(date)
}

/// `YYYY-MM-DD`.
pub(super) fn iso_day(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// `YYYYMMDD`.
pub(super) fn compact_day(d: Date) -> String {
    format!("{:04}{:02}{:02}", d.year(), u8::from(d.month()), d.day())
}

/// `2026年11月30日 00:00:00`, the start of `d`.
pub(super) fn chinese_day_start(d: Date) -> String {
    format!(
        "{:04}年{:02}月{:02}日 00:00:00",
        d.year(),
        u8::from(d.month()),
        d.day()
    )
}

/// Now in China as `2026年12月01日 09:00:00`.
pub(super) fn chinese_now() -> String {
    let t = OffsetDateTime::now_utc().to_offset(china());
    format!(
        "{:04}年{:02}月{:02}日 {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// An RFC 3339 time (as WeChat Pay's `success_time`) as China time `YYYY-MM-DD HH:MM:SS`.
pub(super) fn china_stamp(rfc3339: &str) -> Option<String> {
    let t = OffsetDateTime::parse(rfc3339, &Rfc3339)
        .ok()?
        .to_offset(china());
    Some(format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    ))
}

/// Whether a China time `YYYY-MM-DD HH:MM:SS` falls on `day`.
pub(super) fn on_day(stamp: &str, day: Date) -> bool {
    stamp.get(..10) == Some(iso_day(day).as_str())
}

/// The fee of `amount` fen at `rate`, half up to the fen (the layout's formula).
pub(super) fn fee(amount: u64, rate: FeeRate) -> u64 {
    rate.fee(amount)
}

/// Fen as signed yuan text: `19.99`, `-0.02`; zero is `0.00`.
pub(super) fn signed_yuan(fen: i128) -> String {
    let abs = u64::try_from(fen.unsigned_abs()).unwrap_or(u64::MAX);
    if fen < 0 {
        format!("-{}", yuan(abs))
    } else {
        yuan(abs)
    }
}

/// A rate as a percentage without trailing zeros: `0.38%`, `0.6%`, `0%`, `100%`.
pub(super) fn rate_percent(rate: FeeRate) -> String {
    // ppm / 10_000 is the percentage; four decimals at most.
    let (int, frac) = (rate.ppm / 10_000, rate.ppm % 10_000);
    let frac = format!("{frac:04}");
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        format!("{int}%")
    } else {
        format!("{int}.{frac}%")
    }
}

/// Free text (a description, an attach) made safe for a comma-separated line: commas
/// become full-width `，`, line breaks and tabs spaces, a backtick `'`.
pub(super) fn field_text(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            ',' => '，',
            '\r' | '\n' | '\t' => ' ',
            '`' => '\'',
            c => c,
        })
        .collect()
}

/// Lowercase hex SHA-1 of `bytes`.
pub(super) fn sha1_hex(bytes: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The gzip of `bytes`.
pub(super) fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes)?;
    enc.finish()
}

/// `text` in GBK (characters GBK lacks become numeric character references).
pub(super) fn gbk(text: &str) -> Vec<u8> {
    encoding_rs::GBK.encode(text).0.into_owned()
}

/// Why a zip could not be written.
#[derive(Debug, thiserror::Error)]
pub(super) enum ZipError {
    #[error("zip: {0}")]
    Zip(#[from] zip::result::ZipError),
    #[error("zip: {0}")]
    Io(#[from] std::io::Error),
    #[error("zip: the written archive is not as expected ({0})")]
    Layout(&'static str),
}

/// A zip (deflated) of `files`, each `(name, content)` with the name's bytes written as
/// given (GBK, say) and no UTF-8 flag, as Alipay's statement zips are.
///
/// The `zip` crate writes names from `&str` (flagged UTF-8 when not ASCII), so each file is
/// written under an ASCII stand-in of the same byte length and its name bytes are then
/// replaced where the central directory says they are (local header and central entry);
/// names are covered by no checksum.
pub(super) fn zip_raw_names(files: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<u8>, ZipError> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (i, (name, content)) in files.iter().enumerate() {
        w.start_file(stand_in(i, name.len()), options)?;
        w.write_all(content)?;
    }
    let mut bytes = w.finish()?.into_inner();
    rename_entries(&mut bytes, files)?;
    Ok(bytes)
}

/// A unique ASCII name of `len` bytes for the `i`-th file (names are at least 8 bytes).
fn stand_in(i: usize, len: usize) -> String {
    let head = format!("{i:04}");
    format!("{head}{}", "_".repeat(len.saturating_sub(head.len())))
}

/// Puts each file's real name in place of its stand-in, in the order written.
fn rename_entries(zip: &mut [u8], files: &[(Vec<u8>, Vec<u8>)]) -> Result<(), ZipError> {
    let u16_at = |z: &[u8], at: usize| -> Result<usize, ZipError> {
        z.get(at..at + 2)
            .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
            .ok_or(ZipError::Layout("short"))
    };
    let u32_at = |z: &[u8], at: usize| -> Result<usize, ZipError> {
        z.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or(ZipError::Layout("short"))
    };
    // End of central directory: 22 bytes at the end (no archive comment).
    let eocd = zip
        .len()
        .checked_sub(22)
        .ok_or(ZipError::Layout("no end record"))?;
    if u32_at(zip, eocd)? != 0x0605_4b50 {
        return Err(ZipError::Layout("no end record"));
    }
    if u16_at(zip, eocd + 10)? != files.len() {
        return Err(ZipError::Layout("entry count"));
    }
    let mut at = u32_at(zip, eocd + 16)?;
    for (i, (name, _)) in files.iter().enumerate() {
        if u32_at(zip, at)? != 0x0201_4b50 {
            return Err(ZipError::Layout("central entry"));
        }
        let (name_len, extra_len, comment_len) = (
            u16_at(zip, at + 28)?,
            u16_at(zip, at + 30)?,
            u16_at(zip, at + 32)?,
        );
        let local = u32_at(zip, at + 42)?;
        if name_len != name.len()
            || u32_at(zip, local)? != 0x0403_4b50
            || u16_at(zip, local + 26)? != name.len()
        {
            return Err(ZipError::Layout("name length"));
        }
        let expected = stand_in(i, name.len());
        for start in [at + 46, local + 30] {
            let slot = zip
                .get_mut(start..start + name.len())
                .ok_or(ZipError::Layout("short"))?;
            if slot != expected.as_bytes() {
                return Err(ZipError::Layout("stand-in name"));
            }
            slot.copy_from_slice(name);
        }
        at += 46 + name_len + extra_len + comment_len;
    }
    Ok(())
}

/// One statement file kept for download.
#[derive(Clone, Debug)]
pub(super) struct Kept {
    /// Who may download it (WeChat Pay: the signing mchid), if anyone in particular.
    pub(super) owner: Option<String>,
    pub(super) bytes: Bytes,
    pub(super) content_type: &'static str,
    /// The file's name, for `Content-Disposition`.
    pub(super) filename: String,
}

/// Statement files by opaque token, the latest [`KEPT_FILES`].
#[derive(Default)]
pub(super) struct Files {
    kept: Mutex<VecDeque<(String, Kept)>>,
}

impl Files {
    /// Keeps `file`; its new token.
    pub(super) fn keep(&self, file: Kept) -> String {
        let token = crate::channel::wechatpay::sign::nonce().to_lowercase();
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() == KEPT_FILES {
            kept.pop_front();
        }
        kept.push_back((token.clone(), file));
        token
    }

    pub(super) fn get(&self, token: &str) -> Option<Kept> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.iter()
            .find(|(t, _)| t == token)
            .map(|(_, f)| f.clone())
    }
}

/// A downloaded file's answer: 200 with the bytes, unsigned.
pub(super) fn file_answer(file: &Kept) -> super::shared::Answer {
    let mut resp = http::Response::new(http_body_util::Full::new(file.bytes.clone()));
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(file.content_type),
    );
    if let Ok(v) =
        http::HeaderValue::from_str(&format!("attachment; filename=\"{}\"", file.filename))
    {
        h.insert(http::header::CONTENT_DISPOSITION, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn bill_dates_are_exact_days_up_to_today() {
        let today = china_today();
        assert_eq!(statement_day(&iso_day(today)), Ok(today));
        assert_eq!(
            statement_day("2024-02-29").map(iso_day).as_deref(),
            Ok("2024-02-29")
        );
        let tomorrow = today.next_day().unwrap();
        assert_eq!(statement_day(&iso_day(tomorrow)), Err(BadDay::Future));
        for bad in [
            "",
            "2026-1-01",
            "2026/11/30",
            "20261130",
            "2026-13-01",
            "2025-02-29",
            "2026-11-31",
            "+026-11-30",
            "2026-11-3a",
            "２０２６-11-30",
            "2026-11-300",
        ] {
            assert_eq!(statement_day(bad), Err(BadDay::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn fees_round_half_up_and_money_and_rates_read_as_the_layout_says() {
        let r = |s: &str| FeeRate::parse(s).unwrap();
        // The layout's examples.
        assert_eq!(fee(1999, r("0.0038")), 8);
        assert_eq!(fee(500, r("0.0038")), 2);
        assert_eq!(fee(1999, r("0.006")), 12);
        assert_eq!(fee(500, r("0.006")), 3);
        // Exactly half a fen rounds up: 250 × 0.002 = 0.5.
        assert_eq!(fee(250, r("0.002")), 1);
        assert_eq!(fee(249, r("0.002")), 0);
        assert_eq!(fee(100, r("0")), 0);
        assert_eq!(signed_yuan(-2), "-0.02");
        assert_eq!(signed_yuan(0), "0.00");
        assert_eq!(signed_yuan(1999), "19.99");
        assert_eq!(signed_yuan(-500), "-5.00");
        assert_eq!(rate_percent(r("0.0038")), "0.38%");
        assert_eq!(rate_percent(r("0.006")), "0.6%");
        assert_eq!(rate_percent(r("0")), "0%");
        assert_eq!(rate_percent(r("1")), "100%");
        assert_eq!(rate_percent(r("0.000001")), "0.0001%");
    }

    #[test]
    fn times_and_text() {
        assert_eq!(
            china_stamp("2026-11-30T10:00:05+08:00").as_deref(),
            Some("2026-11-30 10:00:05")
        );
        assert_eq!(
            china_stamp("2026-11-30T20:00:05Z").as_deref(),
            Some("2026-12-01 04:00:05")
        );
        assert_eq!(china_stamp("yesterday"), None);
        let d = statement_day("2026-11-30").unwrap();
        assert!(on_day("2026-11-30 23:59:59", d));
        assert!(!on_day("2026-12-01 00:00:00", d));
        assert!(!on_day("", d));
        assert_eq!(compact_day(d), "20261130");
        assert_eq!(chinese_day_start(d), "2026年11月30日 00:00:00");
        assert_eq!(field_text("a,b\r\nc`d"), "a，b  c'd");
        assert_eq!(sha1_hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }

    #[test]
    fn gzip_round_trips() {
        let z = gzip(b"hello\r\n").unwrap();
        let mut out = String::new();
        flate2::read::GzDecoder::new(&z[..])
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "hello\r\n");
    }

    #[test]
    fn zip_names_are_the_bytes_given_without_the_utf8_flag() {
        let names = [
            "2088_20261130_业务明细.csv",
            "2088_20261130_业务明细(汇总).csv",
        ];
        let files: Vec<(Vec<u8>, Vec<u8>)> = names
            .iter()
            .map(|n| (gbk(n), gbk(&format!("#{n}\r\n合计\r\n"))))
            .collect();
        let bytes = zip_raw_names(&files).unwrap();
        let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
        assert_eq!(archive.len(), 2);
        for (i, name) in names.iter().enumerate() {
            let mut f = archive.by_index(i).unwrap();
            assert_eq!(f.name_raw(), gbk(name).as_slice(), "{name}");
            let mut content = Vec::new();
            f.read_to_end(&mut content).unwrap();
            let (text, _, bad) = encoding_rs::GBK.decode(&content);
            assert!(!bad);
            assert_eq!(text, format!("#{name}\r\n合计\r\n"));
        }
        // No UTF-8 flag (bit 11) in any local header or central entry.
        let raw = zip_raw_names(&files).unwrap();
        for sig in [[0x50, 0x4b, 0x03, 0x04], [0x50, 0x4b, 0x01, 0x02]] {
            let flag_at = if sig[2] == 3 { 6 } else { 8 };
            let found: Vec<usize> = raw
                .windows(4)
                .enumerate()
                .filter(|(_, w)| *w == sig)
                .map(|(i, _)| i)
                .collect();
            assert_eq!(found.len(), 2);
            for at in found {
                let flags = u16::from_le_bytes([raw[at + flag_at], raw[at + flag_at + 1]]);
                assert_eq!(flags & (1 << 11), 0);
            }
        }
    }

    #[test]
    fn kept_files_are_found_by_token_and_the_oldest_go() {
        let files = Files::default();
        let file = |n: u8| Kept {
            owner: None,
            bytes: Bytes::from(vec![n]),
            content_type: "text/csv",
            filename: "f".into(),
        };
        let first = files.keep(file(0));
        assert_eq!(first.len(), 32);
        assert_eq!(files.get(&first).unwrap().bytes[..], [0]);
        for n in 1..=KEPT_FILES {
            files.keep(file(n as u8));
        }
        assert!(files.get(&first).is_none(), "the oldest went");
        assert!(files.get("nope").is_none());
    }
}
