//! The parsers against the hand-written fixtures in `tests/fixtures/statements/` (the providers'
//! published layouts, `/work/notes/statement-layout.md`), as bytes exactly as downloaded.

use std::io::Write;

use super::alipay::parse_trade_zip;
use super::wechat::parse_tradebill;
use super::{RowKind, Statement, StatementError, StatementRow};

fn fixture(name: &str) -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/statements/");
    std::fs::read(format!("{path}{name}")).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn sha1(bytes: &[u8]) -> String {
    crate::ids::hex(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, bytes).as_ref(),
    )
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(bytes).unwrap();
    z.finish().unwrap()
}

fn wechat(name: &str) -> Result<Statement, StatementError> {
    let bytes = fixture(name);
    parse_tradebill(&bytes, false, &sha1(&bytes))
}

/// The fixture's text with `from` replaced (once, and it must be there), hashed anew: a bill
/// whose hash is right but whose content is wrong.
fn wechat_edited(name: &str, from: &str, to: &str) -> Result<Statement, StatementError> {
    let text = String::from_utf8(fixture(name)).unwrap();
    assert!(text.contains(from), "{from:?} is not in {name}");
    let edited = text.replacen(from, to, 1);
    parse_tradebill(edited.as_bytes(), false, &sha1(edited.as_bytes()))
}

const ALIPAY_ZIP: &str = "alipay_trade_2088000000001001_20261130.csv.zip";

// A row spelled out in full reads best as one call per row in the expected lists.
#[allow(clippy::too_many_arguments)]
fn row(
    kind: RowKind,
    out_trade_no: &str,
    provider_trade_no: &str,
    refund: Option<(&str, Option<&str>)>,
    amount: u64,
    fee: i64,
    at: &str,
    account: Option<&str>,
) -> StatementRow {
    StatementRow {
        kind,
        out_trade_no: out_trade_no.into(),
        provider_trade_no: provider_trade_no.into(),
        out_refund_no: refund.map(|r| r.0.into()),
        provider_refund_no: refund.and_then(|r| r.1.map(Into::into)),
        amount,
        fee,
        at: at.into(),
        account: account.map(Into::into),
    }
}

fn wechat_direct_rows() -> Vec<StatementRow> {
    let m = Some("1900000109");
    vec![
        row(
            RowKind::Payment,
            "ORDER1",
            "4200000001202611301234567890",
            None,
            1999,
            8,
            "2026-11-30 10:00:05",
            m,
        ),
        row(
            RowKind::Payment,
            "ORDER3",
            "4200000001202611301234567891",
            None,
            8800,
            33,
            "2026-11-30 10:30:12",
            m,
        ),
        row(
            RowKind::Refund,
            "ORDER1",
            "4200000001202611301234567890",
            Some(("ORDER1-r1", Some("50000000012026113000000001"))),
            500,
            -2,
            "2026-11-30 11:00:00",
            m,
        ),
    ]
}

#[test]
fn wechat_direct_bill_two_payments_one_refund() {
    let s = wechat("wechat_tradebill_direct.csv").unwrap();
    assert_eq!(s.rows, wechat_direct_rows());
    assert_eq!((s.payments, s.refunds), (2, 1));
    assert_eq!(
        (s.paid_total, s.refunded_total, s.fee_total),
        (10_799, 500, 39)
    );
    assert_eq!(s.account, None);
}

#[test]
fn wechat_partner_bill_rows_belong_to_the_sub_merchant() {
    let s = wechat("wechat_tradebill_partner.csv").unwrap();
    assert!(
        s.rows
            .iter()
            .all(|r| r.account.as_deref() == Some("1900000201")),
        "{:?}",
        s.rows
    );
    // 商品名称 `马克杯,大号` holds a comma: the columns after it are still read right.
    assert_eq!(s.rows[0].out_trade_no, "P-ORDER1");
    assert_eq!((s.rows[0].amount, s.rows[0].fee), (1000, 6));
    assert_eq!((s.rows[1].amount, s.rows[1].fee), (84, 1));
    assert_eq!(s.rows[2].kind, RowKind::Refund);
    assert_eq!((s.rows[2].amount, s.rows[2].fee), (1000, -6));
    assert_eq!(s.rows[2].out_refund_no.as_deref(), Some("P-ORDER1-r1"));
    assert_eq!((s.payments, s.refunds), (2, 1));
    assert_eq!(
        (s.paid_total, s.refunded_total, s.fee_total),
        (1084, 1000, 1)
    );
}

#[test]
fn wechat_empty_day() {
    let s = wechat("wechat_tradebill_empty.csv").unwrap();
    assert_eq!(s, Statement::default());
}

#[test]
fn wechat_gzip_bill_is_hashed_as_downloaded() {
    let plain = fixture("wechat_tradebill_direct.csv");
    let gz = gzip(&plain);
    let s = parse_tradebill(&gz, true, &sha1(&gz)).unwrap();
    assert_eq!(s.rows, wechat_direct_rows());
    // The hash is of the gzip bytes; the plain file's hash does not vouch for them.
    let r = parse_tradebill(&gz, true, &sha1(&plain));
    assert!(
        matches!(r, Err(StatementError::HashMismatch { .. })),
        "{r:?}"
    );
    // A gzip cut short is refused even when its (truncated) bytes are what was hashed.
    let cut = &gz[..gz.len() - 10];
    let r = parse_tradebill(cut, true, &sha1(cut));
    assert!(matches!(r, Err(StatementError::Gzip(_))), "{r:?}");
}

#[test]
fn wechat_wrong_hash_gives_no_rows() {
    let bytes = fixture("wechat_tradebill_direct.csv");
    let mut tampered = bytes.clone();
    // One fen less on ORDER1's settled amount: the stated hash no longer matches.
    let at = tampered.windows(6).position(|w| w == b"`19.99").unwrap();
    tampered[at + 5] = b'8';
    match parse_tradebill(&tampered, false, &sha1(&bytes)) {
        Err(StatementError::HashMismatch { stated, actual }) => {
            assert_eq!(stated, sha1(&bytes));
            assert_eq!(actual, sha1(&tampered));
        }
        other => panic!("expected HashMismatch, got {other:?}"),
    }
}

#[test]
fn wechat_summary_that_disagrees_is_refused() {
    let r = wechat_edited("wechat_tradebill_direct.csv", "`0.39,", "`0.40,");
    match r {
        Err(StatementError::SummaryMismatch {
            what,
            stated,
            counted,
        }) => {
            assert_eq!(
                (what, stated.as_str(), counted.as_str()),
                ("手续费总金额", "0.40", "0.39")
            );
        }
        other => panic!("expected SummaryMismatch, got {other:?}"),
    }
    // A row dropped (the file is short one payment): the count disagrees first.
    let text = String::from_utf8(fixture("wechat_tradebill_direct.csv")).unwrap();
    let dropped: String = text
        .split_inclusive('\n')
        .filter(|l| !l.contains("ORDER3"))
        .collect();
    let r = parse_tradebill(dropped.as_bytes(), false, &sha1(dropped.as_bytes()));
    assert!(
        matches!(
            r,
            Err(StatementError::SummaryMismatch {
                what: "总交易单数",
                ..
            })
        ),
        "{r:?}"
    );
}

#[test]
fn wechat_malformed_amount_is_refused_with_its_line() {
    for bad in ["`88.001,", "`8.8e1,", "`88.00.0,"] {
        match wechat_edited("wechat_tradebill_direct.csv", "`88.00,", bad) {
            Err(StatementError::Malformed { line, why }) => {
                assert_eq!(line, 3, "{bad}");
                assert!(why.contains("应结订单金额"), "{bad}: {why}");
            }
            other => panic!("{bad}: expected Malformed, got {other:?}"),
        }
    }
}

#[test]
fn wechat_empty_day_that_claims_a_trade_is_refused() {
    let r = wechat_edited("wechat_tradebill_empty.csv", "`0,`0.00", "`1,`0.00");
    assert!(
        matches!(
            r,
            Err(StatementError::SummaryMismatch {
                what: "总交易单数",
                ..
            })
        ),
        "{r:?}"
    );
}

#[test]
fn alipay_zip_payments_refund_and_gbk_text() {
    let bytes = fixture(ALIPAY_ZIP);
    // The fixture is what Alipay sends: GBK names without the UTF-8 flag (bit 11 of the flags
    // at offset 6 of each local header), so this exercises the GBK path of the name lookup.
    assert_eq!(&bytes[..4], b"PK\x03\x04");
    assert_eq!(u16::from_le_bytes([bytes[6], bytes[7]]) & 0x800, 0);
    let s = parse_trade_zip(&bytes).unwrap();
    assert_eq!(s.account.as_deref(), Some("2088000000001001"));
    assert_eq!(
        s.rows,
        vec![
            row(
                RowKind::Payment,
                "ORDER2",
                "2026113022001400001234567890",
                None,
                1999,
                12,
                "2026-11-30 10:00:05",
                None
            ),
            row(
                RowKind::Payment,
                "ORDER4",
                "2026113022001400001234567891",
                None,
                5800,
                35,
                "2026-11-30 14:20:31",
                None
            ),
            row(
                RowKind::Refund,
                "ORDER2",
                "2026113022001400001234567890",
                Some(("ORDER2-r1", None)),
                500,
                -3,
                "2026-11-30 11:00:00",
                None,
            ),
        ]
    );
    assert_eq!((s.payments, s.refunds), (2, 1));
    assert_eq!(
        (s.paid_total, s.refunded_total, s.fee_total),
        (7799, 500, 44)
    );
}

#[test]
fn alipay_zip_names_are_gbk() {
    // The detail entry's name decodes as GBK to the expected Chinese name (and is not UTF-8).
    let bytes = fixture(ALIPAY_ZIP);
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(&bytes[..])).unwrap();
    let names: Vec<Vec<u8>> = (0..z.len())
        .map(|i| z.by_index_raw(i).unwrap().name_raw().to_vec())
        .collect();
    let gbk: Vec<String> = names
        .iter()
        .map(|n| {
            encoding_rs::GBK
                .decode_without_bom_handling(n)
                .0
                .into_owned()
        })
        .collect();
    assert_eq!(
        gbk,
        [
            "2088000000001001_20261130_业务明细.csv",
            "2088000000001001_20261130_业务明细(汇总).csv"
        ]
    );
    assert!(names.iter().all(|n| std::str::from_utf8(n).is_err()));
}

#[test]
fn alipay_truncated_zip_is_refused() {
    let bytes = fixture(ALIPAY_ZIP);
    for keep in [bytes.len() - 1, bytes.len() - 22, bytes.len() / 2, 30, 0] {
        let r = parse_trade_zip(&bytes[..keep]);
        assert!(
            matches!(r, Err(StatementError::Zip(_))),
            "{keep} bytes: {r:?}"
        );
    }
}

#[test]
fn alipay_corrupt_entry_is_refused() {
    // A byte flipped inside the detail entry's deflated data: inflating fails or the CRC-32
    // disagrees — either way an error, never rows. (Its data starts after the 30-byte local
    // header and the name.)
    let bytes = fixture(ALIPAY_ZIP);
    let name_len = usize::from(u16::from_le_bytes([bytes[26], bytes[27]]));
    for offset in [0, 7, 100, 300] {
        let mut corrupt = bytes.clone();
        corrupt[30 + name_len + offset] ^= 0x55;
        let r = parse_trade_zip(&corrupt);
        assert!(
            matches!(r, Err(StatementError::Zip(_))),
            "offset {offset}: {r:?}"
        );
    }
}

/// The detail source edited, encoded GBK and zipped (names UTF-8-flagged, as ZipWriter writes).
fn alipay_edited(from: &str, to: &str) -> Result<Statement, StatementError> {
    let text = String::from_utf8(fixture("alipay_trade_detail.csv.utf8")).unwrap();
    assert!(text.contains(from), "{from:?} is not in the source");
    let crlf: String = text
        .replacen(from, to, 1)
        .lines()
        .map(|l| format!("{l}\r\n"))
        .collect();
    let (gbk, _, unmappable) = encoding_rs::GBK.encode(&crlf);
    assert!(!unmappable);
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.start_file(
        "2088000000001001_20261130_业务明细.csv",
        zip::write::SimpleFileOptions::default(),
    )
    .unwrap();
    w.write_all(&gbk).unwrap();
    parse_trade_zip(&w.finish().unwrap().into_inner())
}

#[test]
fn alipay_source_and_zip_agree() {
    // The committed zip was built from the committed source (make_alipay_zip.py).
    assert_eq!(
        alipay_edited("", "").unwrap(),
        parse_trade_zip(&fixture(ALIPAY_ZIP)).unwrap()
    );
}

#[test]
fn alipay_totals_that_disagree_are_refused() {
    match alipay_edited("商家实收：77.99元", "商家实收：78.00元") {
        Err(StatementError::SummaryMismatch {
            what,
            stated,
            counted,
        }) => {
            assert_eq!(
                (what, stated.as_str(), counted.as_str()),
                ("交易合计 商家实收", "78.00", "77.99")
            );
        }
        other => panic!("expected SummaryMismatch, got {other:?}"),
    }
    let r = alipay_edited("#退款合计：1笔", "#退款合计：2笔");
    assert!(
        matches!(
            r,
            Err(StatementError::SummaryMismatch {
                what: "退款合计 笔数",
                ..
            })
        ),
        "{r:?}"
    );
}

#[test]
fn alipay_malformed_amount_is_refused_with_its_line() {
    for bad in ["58.001", "5.8e1", "-"] {
        match alipay_edited(",58.00\t,58.00\t,", &format!(",58.00\t,{bad}\t,")) {
            Err(StatementError::Malformed { line, why }) => {
                assert_eq!(line, 7, "{bad}");
                assert!(why.contains("商家实收（元）"), "{bad}: {why}");
            }
            other => panic!("{bad}: expected Malformed, got {other:?}"),
        }
    }
}

#[test]
fn alipay_empty_day() {
    let text = String::from_utf8(fixture("alipay_trade_detail.csv.utf8")).unwrap();
    let empty: String = text
        .lines()
        .filter(|l| !l.starts_with("2026"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("2笔，商家实收：77.99元", "0笔，商家实收：0.00元")
        .replace("1笔，商家实收：-5.00元", "0笔，商家实收：0.00元");
    let r = alipay_edited(&text, &empty).unwrap();
    assert_eq!(r.rows, vec![]);
    assert_eq!(
        (r.payments, r.refunds, r.paid_total, r.fee_total),
        (0, 0, 0, 0)
    );
    assert_eq!(r.account.as_deref(), Some("2088000000001001"));
}

#[test]
fn wechat_no_prefix_of_a_bill_is_a_partial_statement() {
    // Hashed as given, so each cut reaches the parser: it must refuse, or (a cut inside the
    // final line that still reads as the same totals, `5.00` → `5`) return every row.
    for name in [
        "wechat_tradebill_direct.csv",
        "wechat_tradebill_partner.csv",
    ] {
        let bytes = fixture(name);
        let whole = wechat(name).unwrap();
        let mut refused = 0;
        for cut in 0..bytes.len() {
            match parse_tradebill(&bytes[..cut], false, &sha1(&bytes[..cut])) {
                Ok(s) => assert_eq!(s, whole, "{name} cut at {cut} bytes"),
                Err(_) => refused += 1,
            }
        }
        assert!(
            refused > bytes.len() - 20,
            "{name}: only {refused} cuts refused"
        );
    }
}

#[test]
fn no_byte_flip_makes_a_parser_panic() {
    // Every byte of each fixture changed in turn: the parsers answer, Ok or Err, never panic.
    for name in ["wechat_tradebill_direct.csv", "wechat_tradebill_empty.csv"] {
        let bytes = fixture(name);
        for i in 0..bytes.len() {
            for x in [0x01, 0x20, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] ^= x;
                let _ = parse_tradebill(&b, false, &sha1(&b));
            }
        }
    }
    let zip = fixture(ALIPAY_ZIP);
    for i in 0..zip.len() {
        for x in [0x01, 0x20, 0x80, 0xff] {
            let mut b = zip.clone();
            b[i] ^= x;
            let _ = parse_trade_zip(&b);
        }
    }
}

#[test]
fn alipay_every_prefix_of_the_zip_is_refused() {
    let zip = fixture(ALIPAY_ZIP);
    for cut in 0..zip.len() {
        assert!(parse_trade_zip(&zip[..cut]).is_err(), "cut at {cut} bytes");
    }
}
