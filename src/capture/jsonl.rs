//! The JSONL sink: one JSON object per line appended to a file, on a dedicated thread,
//! written and flushed a batch at a time (fsync per batch when asked), the file reopened
//! before the next batch after SIGHUP so logrotate can move it away.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Inbox, Msg};
use crate::config::SinkConfig;

/// How long a failed write waits before the batch is tried once more (file reopened).
const RETRY_PAUSE: Duration = Duration::from_millis(200);

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Open the file now (a bad path fails the start) and run the writer thread.
pub(super) fn start(
    sink: &SinkConfig,
    path: &Path,
    fsync: bool,
    inbox: Inbox,
    reopen: Arc<AtomicBool>,
) -> Result<(), String> {
    let name = sink.name.clone();
    let file = open(path)
        .map_err(|e| format!("capture sink `{name}`: cannot open {}: {e}", path.display()))?;
    let writer = Writer {
        name,
        path: path.to_path_buf(),
        file: Some(file),
        fsync,
        reopen,
        batch: sink.batch,
    };
    std::thread::Builder::new()
        .name(format!("capture-{}", sink.name))
        .spawn(move || writer.run(inbox))
        .map_err(|e| format!("capture sink `{}`: cannot start: {e}", sink.name))?;
    Ok(())
}

struct Writer {
    name: String,
    path: PathBuf,
    file: Option<File>,
    fsync: bool,
    reopen: Arc<AtomicBool>,
    batch: usize,
}

impl Writer {
    fn run(mut self, mut inbox: Inbox) {
        let mut msgs = Vec::with_capacity(self.batch);
        let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
        loop {
            inbox.blocking_batch(self.batch, &mut msgs);
            if msgs.is_empty() {
                return;
            }
            buf.clear();
            let mut records = 0u64;
            for msg in &msgs {
                if let Msg::Record(record, _) = msg {
                    // A record always serializes (strings, numbers, a valid raw value).
                    if serde_json::to_writer(&mut buf, &**record).is_ok() {
                        buf.push(b'\n');
                        records += 1;
                    }
                }
            }
            if records > 0 {
                let started = Instant::now();
                match self.write(&buf) {
                    Ok(()) => inbox.metrics.written(records),
                    Err(e) => {
                        tracing::warn!(sink = %self.name, error = %e, "capture: jsonl write failed");
                        inbox.metrics.failed(records);
                    }
                }
                inbox.metrics.write_took(started.elapsed());
            }
            for msg in msgs.drain(..) {
                if let Msg::Flush(ack) = msg {
                    let _ = ack.send(());
                }
            }
        }
    }

    /// Write one batch; on failure reopen the file and try once more.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if self.reopen.swap(false, Ordering::Relaxed) {
            self.file = None;
        }
        match self.write_once(buf) {
            Ok(()) => Ok(()),
            Err(_) => {
                std::thread::sleep(RETRY_PAUSE);
                self.file = None;
                self.write_once(buf)
            }
        }
    }

    fn write_once(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let file = match &mut self.file {
            Some(f) => f,
            none => none.insert(open(&self.path)?),
        };
        file.write_all(buf)?;
        file.flush()?;
        if self.fsync {
            file.sync_data()?;
        }
        Ok(())
    }
}
