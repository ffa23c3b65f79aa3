//! The simulated WeChat Pay's trade bills: `GET /v3/bill/tradebill` and the download of the
//! file it names.

use super::*;

/// A bill download's answer: the file (unsigned, as WeChat Pay's), or a signed error.
enum Download {
    File(Kept),
    Refused(StatusCode, Value),
}

impl WechatSim {
    /// `GET /v3/bill/tradebill?bill_date=&bill_type=&sub_mchid=&tar_type=`: the bill of
    /// the signing merchant's orders (with `sub_mchid`, that sub-merchant's only; without,
    /// all of the account's) paid on that China day and its refunds succeeded that day,
    /// kept for download; answers its SHA-1 (of the bytes as downloaded — the gzip with
    /// `tar_type=GZIP`) and `download_url`. `corrupt_statements` answers a wrong hash.
    pub(super) fn tradebill(
        &self,
        mchid: &str,
        path_and_query: &str,
        base: &str,
        faults: &Faults,
    ) -> (StatusCode, Value) {
        let q = |k: &str| query_param(path_and_query, k).map(|v| crate::server::decode(&v));
        let day = match bills::statement_day(q("bill_date").as_deref().unwrap_or_default()) {
            Ok(day) => day,
            Err(BadDay::Malformed) => return param_error("bill_date must be a date YYYY-MM-DD"),
            Err(BadDay::Future) => {
                return (
                    StatusCode::BAD_REQUEST,
                    json!({"code": "NO_STATEMENT_EXIST", "message": "账单文件不存在 (no bill for that day yet)"}),
                )
            }
        };
        let Some(kind) = statement::BillType::parse(q("bill_type").as_deref()) else {
            return param_error("bill_type must be ALL, SUCCESS or REFUND");
        };
        let gzip = match q("tar_type").as_deref() {
            None => false,
            Some("GZIP") => true,
            Some(_) => return param_error("tar_type must be GZIP"),
        };
        let sub = q("sub_mchid").filter(|s| !s.is_empty());
        let rate = faults
            .statement_fee_rate()
            .or_else(|| self.fee_rates.load().get(mchid).copied())
            .unwrap_or_default();
        let rows = self
            .orders
            .iter()
            .filter(|o| o.mchid == mchid && (sub.is_none() || o.sub_mchid == sub))
            .flat_map(|o| statement::rows(&o, day, rate, kind))
            .collect();
        let text = statement::bill(rows);
        let bytes = if gzip {
            match bills::gzip(text.as_bytes()) {
                Ok(z) => z,
                Err(e) => {
                    return (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        json!({"code": "SYSTEM_ERROR", "message": e.to_string()}),
                    )
                }
            }
        } else {
            text.into_bytes()
        };
        let mut hash = bills::sha1_hex(&bytes);
        if faults.corrupt_statements {
            // Still 40 lowercase hex digits, just not these bytes'.
            let first = if hash.starts_with('0') { "1" } else { "0" };
            hash.replace_range(..1, first);
        }
        let token = self.bills.keep(Kept {
            owner: Some(mchid.to_string()),
            bytes: Bytes::from(bytes),
            content_type: if gzip {
                "application/x-gzip"
            } else {
                "text/csv;charset=utf-8"
            },
            filename: format!(
                "{}_{}.csv{}",
                mchid,
                bills::compact_day(day),
                if gzip { ".gz" } else { "" }
            ),
        });
        (
            StatusCode::OK,
            json!({
                "hash_type": "SHA1",
                "hash_value": hash,
                "download_url": format!("{base}/v3/billdownload/file?token={token}"),
            }),
        )
    }

    /// `GET /v3/billdownload/file?token=…`, signed by the merchant that asked for the bill:
    /// the file's bytes, unsigned (the bill's hash is what is checked); refusals signed.
    pub(super) async fn bill_download(&self, req: V3Request<'_>, path_and_query: &str) -> Answer {
        self.shared
            .respond(
                |faults| {
                    let mchid =
                        match self.check_signature(req.method, req.headers, path_and_query, b"") {
                            Ok(m) => m,
                            Err(why) => {
                                let v = json!({"code":"SIGN_ERROR","message":why.to_string()});
                                return Outcome::done(
                                    Download::Refused(StatusCode::UNAUTHORIZED, v),
                                    true,
                                );
                            }
                        };
                    let ids = if faults.accounts.is_some() {
                        vec![mchid.clone()]
                    } else {
                        Vec::new()
                    };
                    if let Some(f) = self.shared.take_failure(Some(Op::Statement), &ids) {
                        let code = f.code.unwrap_or_else(|| "SYSTEM_ERROR".into());
                        let status = StatusCode::from_u16(
                            f.status.unwrap_or_else(|| documented_status(&code)),
                        )
                        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                        let v = json!({"code": code, "message": "injected by /sandbox/faults"});
                        return Outcome::injected(Download::Refused(status, v));
                    }
                    let token = query_param(path_and_query, "token").unwrap_or_default();
                    match self.bills.get(&token) {
                        Some(f) if f.owner.as_deref() == Some(mchid.as_str()) => {
                            Outcome::done(Download::File(f), false)
                        }
                        _ => {
                            let (status, v) = param_error(
                                "no bill for this token (unknown, expired, or another merchant's)",
                            );
                            Outcome::done(Download::Refused(status, v), true)
                        }
                    }
                },
                |answer, signing| match answer {
                    Download::File(f) => bills::file_answer(&f),
                    Download::Refused(status, v) => self.signed(status, v, signing),
                },
            )
            .await
    }
}
