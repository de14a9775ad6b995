//! Access log destinations: files (`path`, `/dev/stdout`, `/dev/stderr`) and the process's
//! standard output and error, written without ever blocking a worker.
//!
//! A worker appends a finished line to a buffer of its own (one small mutex per worker and
//! destination, never contended by another worker); one writer thread, `sluice-access-log`,
//! takes the buffers and writes them out every flush interval (1 s by default, Envoy's
//! `--file-flush-interval-msec`), or as soon as a buffer passes the flush size (64 KiB, Envoy's
//! `--file-flush-min-size-kb`). A destination is opened once per process however many loggers
//! name it. [`reopen`] (the admin `/reopen_logs`) and `SIGUSR1` make the writer flush, close and
//! reopen every file, for logrotate. Envoy's `filesystem.*` stats count the work.

use std::cell::Cell;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use crate::stats::{Counter, Gauge, Store};

/// Buffers per destination; each worker thread uses one (threads beyond share round-robin).
const SHARDS: usize = 16;

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    File(PathBuf),
    Stdout,
    Stderr,
}

impl Destination {
    /// A file path; `/dev/stdout` and `/dev/stderr` are the process's own streams.
    pub fn path(path: &str) -> Destination {
        match path {
            "/dev/stdout" => Destination::Stdout,
            "/dev/stderr" => Destination::Stderr,
            p => Destination::File(PathBuf::from(p)),
        }
    }
}

/// Envoy's `filesystem.*` stats.
#[derive(Clone)]
struct FileStats {
    write_buffered: Counter,
    write_completed: Counter,
    write_failed: Counter,
    flushed_by_timer: Counter,
    reopen_failed: Counter,
    write_total_buffered: Gauge,
}

impl FileStats {
    fn new(store: &Store) -> FileStats {
        FileStats {
            write_buffered: store.counter("filesystem.write_buffered"),
            write_completed: store.counter("filesystem.write_completed"),
            write_failed: store.counter("filesystem.write_failed"),
            flushed_by_timer: store.counter("filesystem.flushed_by_timer"),
            reopen_failed: store.counter("filesystem.reopen_failed"),
            write_total_buffered: store.gauge("filesystem.write_total_buffered"),
        }
    }
}

enum Sink {
    File(Option<File>),
    Stdout,
    Stderr,
}

/// One open destination.
pub struct LogFile {
    dest: Destination,
    shards: Box<[Mutex<Vec<u8>>]>,
    pending: AtomicU64,
    reopen: AtomicBool,
    sink: Mutex<Sink>,
    stats: FileStats,
}

impl std::fmt::Debug for LogFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogFile").field("dest", &self.dest).finish()
    }
}

struct Manager {
    files: Mutex<HashMap<Destination, Weak<LogFile>>>,
    flush_interval_ms: AtomicU64,
    min_flush_bytes: AtomicUsize,
    wake: tokio::sync::Notify,
    writer_started: std::sync::Once,
}

fn manager() -> &'static Manager {
    static M: OnceLock<Manager> = OnceLock::new();
    M.get_or_init(|| Manager {
        files: Mutex::new(HashMap::new()),
        flush_interval_ms: AtomicU64::new(1000),
        min_flush_bytes: AtomicUsize::new(64 * 1024),
        wake: tokio::sync::Notify::new(),
        writer_started: std::sync::Once::new(),
    })
}

/// Set the flush interval and the buffer size that triggers a flush (Envoy's
/// `--file-flush-interval-msec`, `--file-flush-min-size-kb`).
pub fn set_flush_options(interval: Duration, min_flush_bytes: usize) {
    let m = manager();
    m.flush_interval_ms.store(interval.as_millis().max(1) as u64, Ordering::Relaxed);
    m.min_flush_bytes.store(min_flush_bytes.max(1), Ordering::Relaxed);
    m.wake.notify_one();
}

/// Flush, close and reopen every file (the admin `/reopen_logs`; `SIGUSR1` does the same).
pub fn reopen() {
    let m = manager();
    for f in live_files() {
        f.reopen.store(true, Ordering::Release);
    }
    m.wake.notify_one();
}

/// Write everything buffered now, on the calling thread (at shutdown).
pub fn flush_now() {
    for f in live_files() {
        f.flush();
    }
}

fn live_files() -> Vec<Arc<LogFile>> {
    let files = manager().files.lock().unwrap_or_else(|e| e.into_inner());
    files.values().filter_map(Weak::upgrade).collect()
}

/// Open (or share) a destination; files are created (appended to) now, so a bad path is a
/// config error.
pub fn open(dest: Destination, store: &Store) -> std::io::Result<Arc<LogFile>> {
    let m = manager();
    let mut files = m.files.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(existing) = files.get(&dest).and_then(Weak::upgrade) {
        return Ok(existing);
    }
    let sink = match &dest {
        Destination::File(p) => Sink::File(Some(open_file(p)?)),
        Destination::Stdout => Sink::Stdout,
        Destination::Stderr => Sink::Stderr,
    };
    let file = Arc::new(LogFile {
        dest: dest.clone(),
        shards: (0..SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
        pending: AtomicU64::new(0),
        reopen: AtomicBool::new(false),
        sink: Mutex::new(sink),
        stats: FileStats::new(store),
    });
    files.retain(|_, w| w.strong_count() > 0);
    files.insert(dest, Arc::downgrade(&file));
    drop(files);
    m.writer_started.call_once(start_writer);
    Ok(file)
}

fn open_file(p: &std::path::Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(p)
}

fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    INDEX.with(|i| {
        if i.get() == usize::MAX {
            i.set(NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS);
        }
        i.get()
    })
}

impl LogFile {
    /// Buffer one line (never blocks on I/O).
    pub fn write(&self, line: &[u8]) {
        if line.is_empty() {
            return;
        }
        let len = {
            let mut buf = self.shards[shard_index()].lock().unwrap_or_else(|e| e.into_inner());
            buf.extend_from_slice(line);
            buf.len()
        };
        self.pending.fetch_add(line.len() as u64, Ordering::Relaxed);
        self.stats.write_buffered.inc();
        self.stats.write_total_buffered.add(line.len() as i64);
        if len >= manager().min_flush_bytes.load(Ordering::Relaxed) {
            manager().wake.notify_one();
        }
    }

    /// Take the buffered lines and write them; reopen first when asked.
    fn flush(&self) {
        let mut data = Vec::new();
        for shard in self.shards.iter() {
            let mut buf = shard.lock().unwrap_or_else(|e| e.into_inner());
            if data.is_empty() {
                std::mem::swap(&mut data, &mut buf);
            } else {
                data.extend_from_slice(&buf);
                buf.clear();
            }
        }
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        if !data.is_empty() {
            self.pending.fetch_sub(data.len() as u64, Ordering::Relaxed);
            self.stats.write_total_buffered.sub(data.len() as i64);
            let result = match &mut *sink {
                Sink::File(Some(f)) => f.write_all(&data),
                Sink::File(None) => Err(std::io::Error::other("file not open")),
                Sink::Stdout => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&data).and_then(|()| out.flush())
                }
                Sink::Stderr => std::io::stderr().lock().write_all(&data),
            };
            match result {
                Ok(()) => self.stats.write_completed.inc(),
                Err(e) => {
                    self.stats.write_failed.inc();
                    tracing::warn!(dest = ?self.dest, "access log write failed: {e}");
                }
            }
        }
        if self.reopen.swap(false, Ordering::AcqRel) {
            if let (Sink::File(f), Destination::File(p)) = (&mut *sink, &self.dest) {
                *f = None;
                match open_file(p) {
                    Ok(new) => *f = Some(new),
                    Err(e) => {
                        self.stats.reopen_failed.inc();
                        tracing::warn!(path = %p.display(), "access log reopen failed: {e}");
                    }
                }
            }
        }
    }

    fn has_pending(&self) -> bool {
        self.pending.load(Ordering::Relaxed) > 0
    }
}

impl Drop for LogFile {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The writer thread: a small runtime of its own waiting for the flush interval, a full
/// buffer, a reopen request or `SIGUSR1`.
fn start_writer() {
    let spawned = std::thread::Builder::new().name("sluice-access-log".into()).spawn(|| {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("access log writer: {e}");
                return;
            }
        };
        runtime.block_on(async {
            let m = manager();
            let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()).ok();
            loop {
                let interval = Duration::from_millis(m.flush_interval_ms.load(Ordering::Relaxed));
                let by_timer = tokio::select! {
                    _ = tokio::time::sleep(interval) => true,
                    _ = m.wake.notified() => false,
                    Some(()) = async {
                        match usr1.as_mut() {
                            Some(s) => s.recv().await,
                            None => std::future::pending().await,
                        }
                    } => {
                        for f in live_files() {
                            f.reopen.store(true, Ordering::Release);
                        }
                        false
                    }
                };
                for f in live_files() {
                    if by_timer && f.has_pending() {
                        f.stats.flushed_by_timer.inc();
                    }
                    f.flush();
                }
            }
        });
    });
    if let Err(e) = spawned {
        tracing::error!("cannot start the access log writer: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-writer-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        dir
    }

    #[test]
    fn lines_reach_the_file_and_reopen_follows_a_rename() {
        let store = Store::new();
        let path = temp("a.log");
        let f = open(Destination::path(path.to_str().unwrap()), &store).unwrap();
        let again = open(Destination::path(path.to_str().unwrap()), &store).unwrap();
        assert!(Arc::ptr_eq(&f, &again), "one destination is opened once");
        f.write(b"one\n");
        f.write(b"two\n");
        flush_now();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\ntwo\n");
        assert_eq!(store.counter("filesystem.write_buffered").value(), 2);
        // logrotate: rename, then reopen; new lines go to a new file at the old path.
        let rotated = temp("a.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        f.write(b"three\n");
        f.reopen.store(true, Ordering::Release);
        f.flush();
        f.write(b"four\n");
        f.flush();
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "one\ntwo\nthree\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "four\n");
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&rotated);
    }

    #[test]
    fn the_writer_flushes_on_its_own() {
        let store = Store::new();
        let path = temp("b.log");
        let f = open(Destination::path(path.to_str().unwrap()), &store).unwrap();
        f.write(b"line\n");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&path).unwrap_or_default() != "line\n" {
            assert!(std::time::Instant::now() < deadline, "not flushed within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_bad_path_is_an_error() {
        let store = Store::new();
        assert!(open(Destination::path("/nonexistent-dir/x/y.log"), &store).is_err());
    }
}
