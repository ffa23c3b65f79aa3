//! Log output (config `log:`): text for people or JSON lines for log shippers, on stderr.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::defaults::DEFAULT_LOG_LEVEL;

/// The HTTP and TLS libraries are quiet below `warn`: their `info` is per connection.
const QUIET_LIBRARIES: &str = "hyper=warn,h2=warn,rustls=warn";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// How the process logs (config `log:`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSettings {
    pub format: LogFormat,
    /// `tracing` filter directives, e.g. `info` or `info,payroute::access=warn`.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Text,
            level: DEFAULT_LOG_LEVEL.to_string(),
        }
    }
}

/// Whether `level` is a valid filter (for config validation).
pub fn check_level(level: &str) -> Result<(), String> {
    tracing_subscriber::EnvFilter::try_new(level)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Installs the process's logger. `RUST_LOG`, when set, overrides `settings.level`. Colour
/// only on a terminal: a file or a log shipper gets no escape codes. Lines reach stderr in
/// batches (see [`Batcher`]); the guard writes what is left when it is dropped.
#[must_use = "dropping the guard flushes the log: keep it until the process ends"]
pub fn init(settings: &LogSettings) -> LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{},{QUIET_LIBRARIES}", settings.level))
    });
    let batcher = Batcher::start(Box::new(std::io::stderr()));
    let guard = LogGuard(batcher.clone());
    // A panic's message goes straight to stderr: the lines that led to it go first.
    let flush = batcher.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        flush.flush();
        previous(info);
    }));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(batcher);
    let _ = match settings.format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    guard
}

/// Writes the log lines still gathered when dropped (at the end of `main`).
pub struct LogGuard(Batcher);

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.0.flush();
    }
}

/// How long a log line may wait to be written with the ones after it.
const BATCH_WAIT: Duration = Duration::from_millis(10);
/// Past this many bytes waiting, a logging thread writes them itself: memory stays bounded
/// when the sink is slow, and the loggers wait for it as they did before batching.
const BATCH_MAX: usize = 1 << 20;

/// Gathers formatted log lines and has a thread of its own write them to the sink in batches.
/// Every line was one `write(2)` to stderr, on the thread that logged it: with the access log
/// on (`info`, the default) that was a quarter of a GET's CPU. A line waits at most
/// [`BATCH_WAIT`]; each is appended whole, so lines never interleave.
#[derive(Clone)]
pub struct Batcher {
    shared: Arc<Shared>,
    /// False when the writing thread could not be started: each line is then written at
    /// once by its logger, as before batching.
    threaded: bool,
}

struct Shared {
    pending: Mutex<Vec<u8>>,
    /// Signalled when `pending` stops being empty.
    filled: Condvar,
    /// Held while writing to the sink, so batches go out in order.
    sink: Mutex<Box<dyn Write + Send>>,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Vec<u8>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sink(&self) -> MutexGuard<'_, Box<dyn Write + Send>> {
        self.sink.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes out what is pending. The sink lock is taken before `pending` is emptied, so
    /// no later batch can overtake this one.
    fn write_out(&self) {
        let mut sink = self.sink();
        let batch = std::mem::take(&mut *self.pending());
        if !batch.is_empty() {
            // Nowhere to report a failing log sink.
            let _ = sink.write_all(&batch);
            let _ = sink.flush();
        }
    }
}

impl Batcher {
    pub fn start(sink: Box<dyn Write + Send>) -> Batcher {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::new()),
            filled: Condvar::new(),
            sink: Mutex::new(sink),
        });
        let worker = shared.clone();
        let threaded = std::thread::Builder::new()
            .name("payroute-log".into())
            .spawn(move || loop {
                {
                    let mut pending = worker.pending();
                    while pending.is_empty() {
                        pending = worker
                            .filled
                            .wait(pending)
                            .unwrap_or_else(|p| p.into_inner());
                    }
                }
                std::thread::sleep(BATCH_WAIT);
                worker.write_out();
            })
            .is_ok();
        Batcher { shared, threaded }
    }

    /// Writes every line gathered so far.
    pub fn flush(&self) {
        self.shared.write_out();
    }

    fn push(&self, line: &[u8]) {
        if !self.threaded {
            let _ = self.shared.sink().write_all(line);
            return;
        }
        let mut pending = self.shared.pending();
        let was_empty = pending.is_empty();
        pending.extend_from_slice(line);
        let full = pending.len() >= BATCH_MAX;
        drop(pending);
        if full {
            self.shared.write_out();
        } else if was_empty {
            self.shared.filled.notify_one();
        }
    }
}

/// What `tracing_subscriber` writes one formatted event into.
pub struct BatchWriter {
    batcher: Batcher,
    /// A warning or an error: written out at once with what waits before it, so that it is
    /// not the line lost to a crash, nor shown after a panic message it led to.
    urgent: bool,
}

impl Write for BatchWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.batcher.push(buf);
        if self.urgent {
            self.batcher.flush();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Batcher {
    type Writer = BatchWriter;

    fn make_writer(&'a self) -> BatchWriter {
        BatchWriter {
            batcher: self.clone(),
            urgent: false,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> BatchWriter {
        BatchWriter {
            batcher: self.clone(),
            urgent: *meta.level() <= tracing::Level::WARN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read back.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_warning_is_written_at_once_with_the_lines_before_it() {
        let sink = Sink::default();
        let batcher = Batcher::start(Box::new(sink.clone()));
        let mut info = BatchWriter {
            batcher: batcher.clone(),
            urgent: false,
        };
        let mut warn = BatchWriter {
            batcher,
            urgent: true,
        };
        info.write_all(b"info line\n").unwrap();
        warn.write_all(b"warn line\n").unwrap();
        // No waiting for the batch: both are out, in order, when the warning's write returns.
        assert_eq!(
            String::from_utf8(sink.0.lock().unwrap().clone()).unwrap(),
            "info line\nwarn line\n"
        );
    }

    #[test]
    fn every_line_arrives_whole_and_each_thread_in_order() {
        let sink = Sink::default();
        let batcher = Batcher::start(Box::new(sink.clone()));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let b = batcher.clone();
                std::thread::spawn(move || {
                    for i in 0..2_000 {
                        let mut w = BatchWriter {
                            batcher: b.clone(),
                            urgent: false,
                        };
                        w.write_all(format!("t{t} line {i}\n").as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        batcher.flush();
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        for t in 0..4 {
            let mine: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("t{t} ")))
                .collect();
            let expected: Vec<String> = (0..2_000).map(|i| format!("t{t} line {i}")).collect();
            assert_eq!(mine, expected);
        }
        assert_eq!(text.lines().count(), 8_000);
    }
}
