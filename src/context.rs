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

/// 16 hex digits, unique within the process: a counter put through a keyed permutation of
/// 64-bit values (a four-round Feistel network whose round function is SipHash under a key
/// drawn at start), so two requests never share an id, runs do not line up, and the ids a
/// shop sees do not tell it how many requests others made in between (an unkeyed scramble
/// can be inverted). An id only tells requests apart in logs; it needs no per-request
/// randomness.
fn fresh_id() -> String {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static KEY: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let key = KEY.get_or_init(std::collections::hash_map::RandomState::new);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let (mut left, mut right) = ((n >> 32) as u32, n as u32);
    for round in 0u8..4 {
        let f = key.hash_one((round, right)) as u32;
        (left, right) = (right, left ^ f);
    }
    format!("{:016x}", (u64::from(left) << 32) | u64::from(right))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SplitMix64's finaliser undone: what the ids were before they were keyed.
    fn unscramble(mut y: u64) -> u64 {
        fn inverse(c: u64) -> u64 {
            let mut inv = c;
            for _ in 0..6 {
                inv = inv.wrapping_mul(2u64.wrapping_sub(c.wrapping_mul(inv)));
            }
            inv
        }
        y ^= (y >> 31) ^ (y >> 62);
        y = y.wrapping_mul(inverse(0x94d0_49bb_1331_11eb));
        y ^= (y >> 27) ^ (y >> 54);
        y = y.wrapping_mul(inverse(0xbf58_476d_1ce4_e5b9));
        y ^ (y >> 30) ^ (y >> 60)
    }

    #[test]
    fn ids_do_not_count_the_requests_between_them() {
        let parse = |id: String| u64::from_str_radix(&id, 16).unwrap();
        let (a, b) = (parse(fresh_id()), parse(fresh_id()));
        // With a public scramble the difference is the number of ids handed out between the
        // two (1, or a few thousand while other tests take ids too).
        let gap = unscramble(b).wrapping_sub(unscramble(a));
        assert!(
            (1_000_000..u64::MAX - 1_000_000).contains(&gap),
            "the ids give away a count: {gap}"
        );
    }

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
