//! The built-in sandbox provider: faithful-enough WeChat Pay API v3 (`wechat`) and Alipay
//! classic gateway (`alipay`) for local runs, tests and benchmarks.
//!
//! Both check each request's signature with the configured merchant's (or app's) public key,
//! validate the fields of each mode, keep orders and refunds in memory, and sign every answer
//! with their own test key — WeChat Pay answers, errors included, carry `Wechatpay-Serial`,
//! `-Timestamp`, `-Nonce`, `-Signature` and `-Signature-Type: WECHATPAY2-SHA256-RSA2048`, as the
//! official SDKs expect. Every key it holds is TEST-ONLY (`config/sandbox/`).
//!
//! Both simulators answer through one path (`Shared::respond`): signature check, then an
//! injected failure if one is due (taken atomically), else the work; then the injected latency
//! (after the work, as a real late answer); then the signature as the faults say.
//!
//! Alipay ISV as at Alipay: each merchant's `app_auth_token` is a grant for its seller
//! ([`SandboxMerchant::AlipayGrant`], from `merchants.<id>.alipay_seller_id`, replaced at each
//! reload); orders are kept by that seller, so a refreshed token reaches the same orders, and
//! an unknown token is refused (`aop.invalid-app-auth-token`).
//!
//! # Test knobs
//! - `POST /sandbox/pay/{out_trade_no}` marks open orders paid (`?mchid=` for one merchant's);
//!   with `?late=true` a closed, never-paid order is paid too (the provider-side race of a
//!   payment taken as the order closed: payroute sees a late payment), and notified as usual.
//! - `GET /sandbox/orders/{out_trade_no}` shows every order with that number at any account:
//!   its fields as stored (`mchid`, `sub_mchid`, `state`, `request` — the create request as
//!   received —, `refunds` as `[no, amount, id, status]` / `[no, amount, status]`, …), plus
//!   `create_calls`, how many create requests that passed the signature check arrived for that
//!   (account, out_trade_no) — duplicates and ones answered `ORDERPAID` /
//!   `ACQ.TRADE_HAS_SUCCESS` included, fault-failed ones not (the fault answers before the
//!   work) —, `query_calls`, the same count of order queries (`GET …/out-trade-no/{no}`,
//!   `alipay.trade.query`) that found the order, and `account`: `{"provider":"wechatpay","mode":"direct"|"partner","mchid",
//!   "sub_mchid"}` or `{"provider":"alipay","app_id","app_auth_token_present"}` (never a token).
//! - `POST /sandbox/faults` replaces the [`Faults`] (unknown fields refused; omitted = off):
//!   `latency_ms`; `tamper_signature` (every answer) and `tamper_errors` (error answers only);
//!   `sign_with_certificate` (WeChat Pay: name the platform certificate's serial); `fail_next`
//!   requests fail, and after them each request with probability `fail_rate` (0 to 1, drawn
//!   from the system's random source; default 0), only of the operations in `fail_ops` when
//!   set (`create`, `query`, `close`, `refund`, `refund_query`, `statement`) and only of the
//!   accounts in
//!   `accounts` when set (a request matches when any of its ids is listed — WeChat Pay: the
//!   signing `mchid`/`sp_mchid`, `sub_mchid` in body or query, `appid`/`sp_appid`/`sub_appid`;
//!   Alipay: `app_id`, and the seller an ISV `app_auth_token` is granted for, or a direct
//!   app's made-up seller id; requests of other accounts neither fail nor consume
//!   `fail_next`). A failure answers with `fail_code` — WeChat Pay: `{"code", "message"}`
//!   (default `SYSTEM_ERROR`) with HTTP `fail_status`, by default the status WeChat Pay
//!   documents for that code (`NO_AUTH`, `ACCOUNT_ERROR`, `ORDERPAID`, `NOT_ENOUGH`, … 403;
//!   `PARAM_ERROR`, `APPID_MCHID_NOT_MATCH`, `MCH_NOT_EXISTS`, … 400; `SIGN_ERROR` 401;
//!   `ORDER_NOT_EXIST` 404; `FREQUENCY_LIMITED` 429; 500 for `SYSTEM_ERROR` and any other);
//!   Alipay: HTTP 200, `sub_code` = `fail_code` (default `ACQ.SYSTEM_ERROR`) under the
//!   gateway `code` Alipay gives it (`40004` for `ACQ.*` and others, `40002` for `isv.*`,
//!   `40006` for `isv.insufficient-*`, `20001` for `aop.*`, `20000` for `isp.*`). Signed as
//!   every answer, unsigned with `fail_unsigned`, with `Retry-After` given
//!   `retry_after_secs`. Refused with 400: an unknown `fail_ops` entry, `fail_rate` outside
//!   0..=1, `fail_status` outside 400..=599, an empty `accounts` list or id. E.g. one WeChat
//!   Pay sub-merchant refusing half its creates as an account without the product:
//!   `{"accounts": ["1900000109"], "fail_rate": 0.5, "fail_code": "NO_AUTH",
//!   "fail_ops": ["create"]}` (Alipay: `"accounts": ["2088…"]` or its `app_id`, `"fail_code":
//!   "ACQ.ACCESS_FORBIDDEN"`); `refund_status` (WeChat Pay refunds created
//!   `PROCESSING` / `ABNORMAL` / `CLOSED` and kept so); `alipay_refund_pending` (refunds
//!   accepted with `fund_change: "N"`, settled by the next refund query);
//!   `drop_notifications` (none sent, as if lost), `duplicate_notifications` (each sent once
//!   more right after its first answered attempt), `notify_delay_ms` (wait before the first
//!   attempt). The notification knobs apply to notifications made while they are set.
//!   `corrupt_statements` (statements asked for while set are broken: WeChat Pay answers a
//!   `hash_value` that does not match the file, Alipay's zip is truncated);
//!   `statement_fee_rate` (a decimal string such as `"0.0038"`, parsed exactly: the fee rate
//!   of every statement row instead of the channel's `fee_rate`; refused with 400 when not a
//!   rate).
//! - `GET /sandbox/notifications` lists every notification attempt, oldest first:
//!   `{"out_trade_no", "out_refund_no" (null for payments), "kind": "payment"|"refund",
//!   "provider": "wechatpay"|"alipay", "url", "attempt" (from 1), "status" (the HTTP status,
//!   or the error text), "answered_ok"}`. `attempt` 0 marks one never sent: `status`
//!   `"dropped"` or `"not sent: …"` (e.g. no APIv3 key).
//! - `GET /sandbox/request_ids` lists the `X-Request-Id` of the latest provider calls (up to
//!   1,000, oldest first): payroute passes the shop's request id on.
//!
//! # Trade statements (`statement`)
//! Both providers' daily trade statements of the sandbox's own trades, in the layout payroute
//! reads (`/work/notes/statement-layout.md`): a China calendar day's payments (by payment
//! time) and refunds that succeeded during it, of the requesting account only; each row's
//! fee is the account's channel `fee_rate` (or `statement_fee_rate`), half up to the fen; a
//! refund returns the fee of the refunded amount. Any day up to today (China time) is
//! served, today's as it stands; a later day is not.
//! - WeChat Pay: `GET /v3/bill/tradebill?bill_date=YYYY-MM-DD[&bill_type=ALL|SUCCESS|REFUND]
//!   [&sub_mchid=…][&tar_type=GZIP]`, signed as every `/v3` call: the signer's orders
//!   (partner: of `sub_mchid`, or of all its sub-merchants without it); answers the signed
//!   `{"hash_type":"SHA1","hash_value","download_url"}`, the SHA-1 of the bytes as
//!   downloaded (the gzip with `tar_type=GZIP`). `GET /v3/billdownload/file?token=…`, signed
//!   by the same merchant, answers the file itself, unsigned. A later day: 400
//!   `NO_STATEMENT_EXIST`; a bad `bill_date`, `bill_type` or `tar_type`: 400 `PARAM_ERROR`.
//! - Alipay: `alipay.data.dataservice.bill.downloadurl.query`, biz_content
//!   `{"bill_type":"trade","bill_date":"YYYY-MM-DD"}` (ISV: the `app_auth_token`'s seller;
//!   direct: the app's own trades): `bill_download_url` =
//!   `<sandbox>/sandbox/alipay/bill/download?token=…`, a plain `GET` of which answers the zip
//!   `<pid>_<yyyymmdd>.csv.zip` of the GBK files `…_业务明细.csv` and `…_业务明细(汇总).csv`
//!   (GBK names, no UTF-8 flag). A later day: `40004 isp.bill_not_exist`; another
//!   `bill_type` or a bad date: `40002 isv.invalid-arguments`.
//!
//! Files are kept in memory, the latest 256; the urls name the sandbox as the request
//! reached it (`https://` when it serves TLS). Free text (descriptions) has commas made
//! full-width and line breaks spaces, so a line stays one row.
//!
//! # Notifications (`notify`)
//! Signed with the same TEST-ONLY keys as the answers, to the `notify_url` of the create
//! request (WeChat Pay refunds: of the refund request; Alipay: optional — none without it):
//! - WeChat Pay, after `POST /sandbox/pay` and after a refund is created settled (`SUCCESS`,
//!   or `ABNORMAL` / `CLOSED` by `refund_status`; `PROCESSING` never settles): a JSON body
//!   `{"id","create_time","resource_type":"encrypt-resource","event_type":
//!   "TRANSACTION.SUCCESS"|"REFUND.SUCCESS"|"REFUND.ABNORMAL"|"REFUND.CLOSED","summary",
//!   "resource":{"original_type","algorithm":"AEAD_AES_256_GCM","ciphertext",
//!   "associated_data","nonce"}}` whose resource is the transaction (as the query answers it)
//!   or the refund, sealed with the merchant's APIv3 key (the `sp_mchid`'s in partner mode,
//!   from [`SandboxMerchant::Wechat`]; no key → not sent) and `associated_data` =
//!   `original_type` (`transaction` / `refund`); headers `Wechatpay-Serial` (public key id,
//!   or the certificate serial with `sign_with_certificate`), `-Timestamp`, `-Nonce`,
//!   `-Signature` over `TS\nNONCE\nBODY\n`, `-Signature-Type`, signed anew at each attempt.
//!   Answered by any 2xx; else retried after 15s/15s/30s/3m/10m/20m/30m/30m/30m/60m/3h/3h/
//!   3h/6h/6h.
//! - Alipay, after pay and after a refund settles: an RSA2-signed `trade_status_sync` form
//!   (`sign` over the sorted fields but `sign` and `sign_type`) naming the order's seller as
//!   `seller_id` (ISV: the merchant's; direct: a stable made-up one); a refund adds `out_biz_no`,
//!   `refund_fee` (all refunded so far), `gmt_refund`, and says `TRADE_CLOSED` once the
//!   whole amount is refunded. Answered by the body `success`; else retried after 4m, 10m,
//!   10m, 1h, 2h, 6h, 15h.
//!
//! Each notification is one spawned task on tokio time (tests pause it); each send is
//! bounded by 5 s. Plain HTTP and HTTPS (web roots plus the sandbox's TEST-ONLY CA).
//!
//! # Limits
//! Refund statuses never change by themselves, except a pending Alipay refund, which settles
//! when queried. No automatic payment after a delay yet: orders are paid by
//! `POST /sandbox/pay`. Notification tasks live until answered or their schedule ends.
//!
//! # Layout
//! `server` (the listener, the `/sandbox/*` knobs, dispatch), `shared` (faults, the answer path,
//! the `Simulator` trait), `wechat/` and `alipay/` (each simulator: keys, orders, signer, its
//! API; `order.rs` its records, `statement.rs` its statement format), `statement` (what both
//! statements share: days, fees, gzip, SHA-1, the zip, files kept for download), `notify`
//! (delivery and retries), `settings` (config's view).
//! A new provider is a new directory implementing `Simulator`, named once in `Sandbox::sims`.
//!
//! # Feature
//! The simulator is behind the default cargo feature `sandbox`, so a production build can
//! leave it out (`--no-default-features`); without it only the settings types remain, and a
//! config with `sandbox:` is refused.

#[cfg(feature = "sandbox")]
mod alipay;
#[cfg(feature = "sandbox")]
pub mod notify;
#[cfg(feature = "sandbox")]
mod server;
mod settings;
#[cfg(feature = "sandbox")]
mod shared;
#[cfg(feature = "sandbox")]
mod statement;
#[cfg(feature = "sandbox")]
mod wechat;

#[cfg(feature = "sandbox")]
pub use server::{Sandbox, TLS_CA_PEM, TLS_CERT_PEM, TLS_KEY_PEM};
pub use settings::{SandboxMerchant, SandboxSettings};
#[cfg(feature = "sandbox")]
pub use shared::Faults;
#[cfg(feature = "sandbox")]
pub use wechat::PUBLIC_KEY_ID;
