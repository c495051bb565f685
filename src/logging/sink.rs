//! The bounded, non-blocking writer behind the access log.
//!
//! A connection task formats its line into a buffer of its thread (kept between lines, so no
//! allocation once it has grown), then appends it to one shared pending buffer under a lock
//! held only for that copy. A writer thread swaps the pending buffer for its empty one (the
//! lock again held only for the swap), writes the batch, and lets the next lines gather for
//! [`LINGER`] before it looks again: under load that is one write per interval and no wake-up
//! per line; an idle writer is woken by the first line. When the pending buffer holds
//! [`ACCESS_BUFFER_BYTES`], a line is dropped and counted (`chunkgate_log_dropped_total`),
//! never waited for.

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;

use super::line::{self, Layout};
use super::ExchangeRecord;

/// Bytes of access-log lines held for the writer; past it, lines are dropped and counted.
pub const ACCESS_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// How long the writer lets lines gather after a write before it writes again.
pub const LINGER: Duration = Duration::from_millis(5);

/// A thread's line buffer above this capacity (a line with a very long path) is let go after
/// use rather than kept.
const MAX_KEPT_LINE: usize = 16 * 1024;

/// Capacity each of the two batch buffers starts with.
const INITIAL_BATCH: usize = 64 * 1024;

thread_local! {
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

struct State {
    /// Whole lines waiting for the writer.
    pending: Vec<u8>,
    /// The writer sleeps until notified (it has nothing to write).
    parked: bool,
    /// No more lines are taken; the writer writes what is pending and ends.
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    limit: usize,
    dropped: Counter,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The handle connection tasks log through.
pub struct Sink {
    shared: Arc<Shared>,
    layout: Layout,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

/// The writer thread; dropping it writes what is pending and stops the thread.
pub struct Worker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    /// Start a writer thread writing lines laid out as `layout` to `out`, holding at most
    /// `limit` bytes of lines, counting dropped lines in `dropped`.
    pub fn start(
        layout: Layout,
        out: Box<dyn Write + Send>,
        limit: usize,
        dropped: Counter,
    ) -> std::io::Result<(Sink, Worker)> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pending: Vec::with_capacity(INITIAL_BATCH.min(limit)),
                parked: false,
                closed: false,
            }),
            wake: Condvar::new(),
            limit,
            dropped,
        });
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("chunkgate-access".into())
                .spawn(move || run(&shared, out))?
        };
        let worker = Worker {
            shared: Arc::clone(&shared),
            thread: Some(thread),
        };
        Ok((Sink { shared, layout }, worker))
    }

    /// Format the line for `rec` and queue it; never waits for the writer.
    pub fn log(&self, rec: &ExchangeRecord) {
        LINE.with_borrow_mut(|line| {
            line.clear();
            line::write(line, rec, SystemTime::now(), self.layout);
            self.push(line);
            if line.capacity() > MAX_KEPT_LINE {
                *line = Vec::new();
            }
        });
    }

    /// Queue one whole line (or drop and count it when the writer is too far behind).
    fn push(&self, line: &[u8]) {
        let mut st = self.shared.lock();
        if st.closed || st.pending.len() + line.len() > self.shared.limit {
            drop(st);
            self.shared.dropped.inc();
            return;
        }
        st.pending.extend_from_slice(line);
        let wake = std::mem::replace(&mut st.parked, false);
        drop(st);
        if wake {
            self.shared.wake.notify_one();
        }
    }
}

/// The writer thread: wait for lines, swap them out, write them, linger, again.
fn run(shared: &Shared, mut out: Box<dyn Write + Send>) {
    let mut batch: Vec<u8> = Vec::with_capacity(INITIAL_BATCH.min(shared.limit));
    loop {
        let closed = {
            let mut st = shared.lock();
            while st.pending.is_empty() && !st.closed {
                st.parked = true;
                st = shared.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
            st.parked = false;
            std::mem::swap(&mut st.pending, &mut batch);
            st.closed
        };
        if batch.is_empty() {
            // Closed with nothing left.
            break;
        }
        // A failed write (standard output closed) loses the batch; there is no one to tell.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        if !closed {
            let st = shared.lock();
            if !st.closed {
                drop(shared.wake.wait_timeout(st, LINGER));
            }
        }
    }
    let _ = out.flush();
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Collects what the writer writes; `stall` blocks every write until it is cleared.
    #[derive(Clone, Default)]
    struct Out {
        bytes: Arc<Mutex<Vec<u8>>>,
        stall: Arc<AtomicBool>,
    }

    impl Write for Out {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            while self.stall.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.bytes.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_arrive_whole_and_in_order_and_drop_flushes() {
        let out = Out::default();
        let (sink, worker) = Sink::start(
            Layout::Json,
            Box::new(out.clone()),
            1 << 20,
            Counter::default(),
        )
        .unwrap();
        for i in 0..1000 {
            sink.push(format!("line {i}\n").as_bytes());
        }
        drop(worker);
        let text = String::from_utf8(out.bytes.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1000);
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(*l, format!("line {i}"));
        }
    }

    #[test]
    fn a_stalled_writer_drops_and_counts_never_blocks() {
        let out = Out::default();
        out.stall.store(true, Ordering::Release);
        let dropped = Counter::default();
        let (sink, worker) =
            Sink::start(Layout::Json, Box::new(out.clone()), 100, dropped.clone()).unwrap();
        let line = [b'x'; 9];
        // The writer may take up to 11 lines before it stalls on writing them; after that,
        // 11 lines fill the 100 bytes and the rest are dropped, at once.
        let started = std::time::Instant::now();
        for _ in 0..1000 {
            sink.push(&line);
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "pushing never waits"
        );
        let kept = 1000 - dropped.get();
        assert!((11..=22).contains(&kept), "kept {kept}");
        out.stall.store(false, Ordering::Release);
        drop(worker);
        assert_eq!(out.bytes.lock().unwrap().len() as u64, kept * 9);
        // After the worker stopped, lines are counted as dropped.
        sink.push(&line);
        assert_eq!(dropped.get(), 1000 - kept + 1);
    }
}
