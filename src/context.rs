//! What one API request carries through its task: its id (sent on to the channel as
//! `X-Request-Id`), the time it waited on channels (for `payroute_overhead_seconds`), and
//! what its access-log line reports (rule, channel, outcome).

use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

/// The header that carries a request's id: from the shop, back to it, on to the channel and
/// with webhooks.
pub const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// The longest `X-Request-Id` taken from a client; a longer or odd one is replaced.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// What the access-log line of a request says about it, filled in as it goes.
#[derive(Clone, Debug, Default)]
pub struct Note {
    pub rule: Option<String>,
    pub channel: Option<String>,
    /// The payment's or refund's status, or the error code.
    pub outcome: Option<&'static str>,
}

struct Context {
    id: String,
    waited: Duration,
    note: Note,
}

tokio::task_local! {
    static CONTEXT: RefCell<Context>;
}

/// Runs `f` as request `id`; returns its output, its waits on channels and its [`Note`].
///
/// # Limits
/// Only what runs on the task that runs `f` is seen; work handed to other tasks is not.
pub fn scope<F: Future>(id: String, f: F) -> impl Future<Output = (F::Output, Duration, Note)> {
    let context = RefCell::new(Context {
        id,
        waited: Duration::ZERO,
        note: Note::default(),
    });
    // Not an `async fn`: one would hold `f` as its argument and again inside the scoped
    // block, and every request's task would carry both copies.
    CONTEXT.scope(context, async move {
        let out = f.await;
        let (waited, note) = CONTEXT.with(|c| {
            let mut c = c.borrow_mut();
            (c.waited, std::mem::take(&mut c.note))
        });
        (out, waited, note)
    })
}

/// Runs `f` as time spent waiting on a channel (outside a [`scope`]: just runs it).
pub async fn waiting<F: Future>(f: F) -> F::Output {
    let started = tokio::time::Instant::now();
    let out = f.await;
    let _ = CONTEXT.try_with(|c| c.borrow_mut().waited += started.elapsed());
    out
}

/// The id of the request this task serves, if any.
pub fn request_id() -> Option<String> {
    CONTEXT.try_with(|c| c.borrow().id.clone()).ok()
}

/// Records what the request came to, for its access-log line.
pub fn note(rule: Option<&str>, channel: &str, outcome: &'static str) {
    let _ = CONTEXT.try_with(|c| {
        c.borrow_mut().note = Note {
            rule: rule.map(str::to_string),
            channel: Some(channel.to_string()),
            outcome: Some(outcome),
        }
    });
}

/// The client's `X-Request-Id` if it is short and plain, else a fresh one.
pub fn request_id_from(header: Option<&str>) -> String {
    match header {
        Some(id)
            if !id.is_empty()
                && id.len() <= MAX_REQUEST_ID_LEN
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) =>
        {
            id.to_string()
        }
        _ => fresh_id(),
    }
}

/// 16 hex digits, unique within the process: a counter from a random start, scrambled by a
/// bijection (SplitMix64's finaliser), so two requests never share an id and ids of different
/// runs do not line up. An id only tells requests apart in logs; it is not a secret, so the
/// OS's generator is asked once per process rather than once per request.
fn fresh_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static START: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let start = *START.get_or_init(|| {
        use aws_lc_rs::rand::SecureRandom;
        let mut bytes = [0u8; 8];
        match aws_lc_rs::rand::SystemRandom::new().fill(&mut bytes) {
            Ok(()) => u64::from_le_bytes(bytes),
            // No randomness: the clock still keeps runs apart.
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or_default(),
        }
    });
    let mut x = start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed));
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    format!("{x:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_client_id_is_kept_and_anything_else_replaced() {
        assert_eq!(request_id_from(Some("req-42.a:b_c")), "req-42.a:b_c");
        for bad in ["", "with space", "new\nline", &"x".repeat(65)] {
            let id = request_id_from(Some(bad));
            assert_eq!(id.len(), 16, "{bad:?} → {id}");
        }
        assert_ne!(request_id_from(None), request_id_from(None));
    }

    #[test]
    fn fresh_ids_do_not_repeat() {
        let ids: std::collections::HashSet<String> =
            (0..100_000).map(|_| request_id_from(None)).collect();
        assert_eq!(ids.len(), 100_000);
        assert!(ids
            .iter()
            .all(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())));
    }
}
