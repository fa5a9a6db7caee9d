//! Telling systemd how the process is doing: the `sd_notify` protocol and a
//! watchdog that only pings while the work really moves.
//!
//! The protocol is one datagram per message on the Unix socket named by
//! `NOTIFY_SOCKET` (a path, or `@name` for Linux's abstract namespace):
//! `READY=1` once the process serves, `STOPPING=1` when it starts draining,
//! `STATUS=…` for `systemctl status`, `WATCHDOG=1` to prove it is alive. It
//! is small enough to speak with the standard library, so there is no
//! libsystemd and no crate (see `docs/decisions/0011-sd-notify-without-a-crate.md`).
//! Without `NOTIFY_SOCKET` (a terminal, pm2, a container) every message is
//! silently dropped, so the roles call these functions unconditionally.
//!
//! The watchdog: with `WatchdogSec=` systemd sets `WATCHDOG_USEC` and kills
//! the service when no `WATCHDOG=1` arrives for that long. A timer that
//! pings blindly would only prove that the runtime's timer works, so
//! [`Watchdog::run`] pings every half period *only if* the worker's
//! [`Progress`] moved since the previous tick. A worker stuck on a dead
//! connection or a hung batch stops pinging and systemd restarts it
//! (`Restart=on-failure`); a worker waiting out a Postgres outage on purpose
//! marks its pauses with [`Progress::pause`] and is left alone, because a
//! restart would not bring Postgres back.
//!
//! How a role uses it: [`notify_ready`] once it serves (the listener bound;
//! for a worker, the consumer name held), [`notify_stopping`] when its
//! shutdown token fires; a worker also spawns [`run_watchdog`] with the
//! [`Progress`] its loop advances.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// Why a message could not be sent or the environment not be read.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET must be an absolute path or an @abstract name, not `{0}`")]
    InvalidSocket(String),
    #[error("WATCHDOG_USEC must be a positive number of microseconds, not `{0}`")]
    InvalidWatchdogUsec(String),
    #[error("WATCHDOG_PID must be a process id, not `{0}`")]
    InvalidWatchdogPid(String),
    #[error("cannot send `{message}` to the service manager: {source}")]
    Send {
        message: String,
        #[source]
        source: io::Error,
    },
}

/// Where the service manager listens.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Address {
    Path(PathBuf),
    /// Linux's abstract namespace, without the leading `@`.
    Abstract(Vec<u8>),
}

/// Sends `sd_notify` messages; a disabled one (no `NOTIFY_SOCKET`) accepts
/// every message and sends nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notifier {
    address: Option<Address>,
}

impl Notifier {
    /// The socket `NOTIFY_SOCKET` names; disabled when it is unset or empty.
    pub fn from_env() -> Result<Self, NotifyError> {
        Self::from_setting(std::env::var_os("NOTIFY_SOCKET").as_deref())
    }

    /// The socket a `NOTIFY_SOCKET` value names (`None`: unset).
    pub fn from_setting(value: Option<&OsStr>) -> Result<Self, NotifyError> {
        let Some(value) = value.filter(|value| !value.is_empty()) else {
            return Ok(Self::disabled());
        };
        let bytes = value.as_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            return Ok(Self { address: Some(Address::Abstract(name.to_vec())) });
        }
        if bytes.starts_with(b"/") {
            return Ok(Self::at(value));
        }
        Err(NotifyError::InvalidSocket(value.to_string_lossy().into_owned()))
    }

    /// A notifier for the socket bound at `path`.
    pub fn at(path: impl AsRef<Path>) -> Self {
        Self { address: Some(Address::Path(path.as_ref().to_owned())) }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Self {
        Self { address: None }
    }

    /// Whether messages go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.address.is_some()
    }

    /// `READY=1`: start-up is over, the process serves.
    pub fn ready(&self) -> Result<(), NotifyError> {
        self.send("READY=1")
    }

    /// `STOPPING=1`: the process is draining and will exit.
    pub fn stopping(&self) -> Result<(), NotifyError> {
        self.send("STOPPING=1")
    }

    /// `STATUS=…`, shown by `systemctl status`. Line breaks become spaces:
    /// each line of a message is an assignment of its own, so a status must
    /// not be able to set another one.
    pub fn status(&self, status: &str) -> Result<(), NotifyError> {
        self.send(&format!("STATUS={}", status.replace(['\n', '\r'], " ")))
    }

    /// `WATCHDOG=1`: the process is alive.
    pub fn watchdog(&self) -> Result<(), NotifyError> {
        self.send("WATCHDOG=1")
    }

    /// Sends `message` (newline-separated assignments) as one datagram. Never
    /// blocks: a service manager too busy to take it gets an error instead.
    pub fn send(&self, message: &str) -> Result<(), NotifyError> {
        let Some(address) = &self.address else {
            return Ok(());
        };
        send_datagram(address, message.as_bytes())
            .map_err(|source| NotifyError::Send { message: message.to_owned(), source })
    }
}

fn send_datagram(address: &Address, message: &[u8]) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    let sent = match address {
        Address::Path(path) => socket.send_to(message, path)?,
        Address::Abstract(name) => send_to_abstract(&socket, name, message)?,
    };
    if sent != message.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "datagram truncated"));
    }
    Ok(())
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn send_to_abstract(socket: &UnixDatagram, name: &[u8], message: &[u8]) -> io::Result<usize> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    socket.send_to_addr(message, &address)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn send_to_abstract(_socket: &UnixDatagram, _name: &[u8], _message: &[u8]) -> io::Result<usize> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "abstract sockets exist on Linux only"))
}

/// Sends through `NOTIFY_SOCKET`, logging (not returning) a failure: being
/// unable to talk to systemd is no reason to stop serving.
fn notify_from_env(send: impl FnOnce(&Notifier) -> Result<(), NotifyError>) {
    let result = Notifier::from_env().and_then(|notifier| send(&notifier));
    if let Err(err) = result {
        tracing::warn!(error = %err, "cannot notify systemd");
    }
}

/// `READY=1` to `NOTIFY_SOCKET`, if set: call once the process serves.
pub(crate) fn notify_ready() {
    notify_from_env(Notifier::ready);
}

/// `STOPPING=1` to `NOTIFY_SOCKET`, if set: call when shutdown begins.
pub(crate) fn notify_stopping() {
    notify_from_env(Notifier::stopping);
}

/// Counts the steps a loop really takes, for the watchdog. Cheap to clone;
/// every clone counts into the same counter.
#[derive(Debug, Clone, Default)]
pub struct Progress(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    steps: AtomicU64,
    pauses: AtomicUsize,
}

impl Progress {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a step: an await that could hang has returned (a blocking
    /// read came back, even empty or with an error; a batch settled).
    pub fn advance(&self) {
        self.0.steps.fetch_add(1, Ordering::Relaxed);
    }

    /// Steps taken so far.
    pub(crate) fn steps(&self) -> u64 {
        self.0.steps.load(Ordering::Relaxed)
    }

    /// Sleeps for `duration` as a deliberate wait (a backoff before the next
    /// try of a dependency that is down): the watchdog counts it as progress,
    /// since a timer cannot hang. Cancelling the future (a `select!` on
    /// shutdown) ends the pause.
    pub async fn pause(&self, duration: Duration) {
        let _pausing = Pausing::start(&self.0);
        tokio::time::sleep(duration).await;
    }

    fn is_pausing(&self) -> bool {
        self.0.pauses.load(Ordering::Relaxed) > 0
    }
}

/// A pause under way; counts as a step when it starts and when it ends.
struct Pausing<'a>(&'a Counters);

impl<'a> Pausing<'a> {
    fn start(counters: &'a Counters) -> Self {
        counters.pauses.fetch_add(1, Ordering::Relaxed);
        counters.steps.fetch_add(1, Ordering::Relaxed);
        Self(counters)
    }
}

impl Drop for Pausing<'_> {
    fn drop(&mut self) {
        self.0.steps.fetch_add(1, Ordering::Relaxed);
        self.0.pauses.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A watchdog systemd asked for (`WatchdogSec=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watchdog {
    notifier: Notifier,
    timeout: Duration,
}

impl Watchdog {
    /// The watchdog `WATCHDOG_USEC` asks for, through `NOTIFY_SOCKET`; `None`
    /// when there is none, or it is meant for another process
    /// (`WATCHDOG_PID`).
    pub fn from_env() -> Result<Option<Self>, NotifyError> {
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        Self::from_settings(Notifier::from_env()?, usec.as_deref(), pid.as_deref(), std::process::id())
    }

    /// The watchdog `WATCHDOG_USEC` and `WATCHDOG_PID` ask of process `own_pid`.
    pub fn from_settings(
        notifier: Notifier,
        usec: Option<&str>,
        pid: Option<&str>,
        own_pid: u32,
    ) -> Result<Option<Self>, NotifyError> {
        let Some(usec) = usec.filter(|usec| !usec.is_empty()) else {
            return Ok(None);
        };
        let micros = usec
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|micros| *micros > 0)
            .ok_or_else(|| NotifyError::InvalidWatchdogUsec(usec.to_owned()))?;
        if let Some(pid) = pid.filter(|pid| !pid.is_empty()) {
            let pid = pid.trim().parse::<u32>().map_err(|_| NotifyError::InvalidWatchdogPid(pid.to_owned()))?;
            if pid != own_pid {
                return Ok(None);
            }
        }
        if !notifier.is_enabled() {
            return Ok(None);
        }
        Ok(Some(Self::new(notifier, Duration::from_micros(micros))))
    }

    /// A watchdog that systemd fires after `timeout` without a ping.
    pub fn new(notifier: Notifier, timeout: Duration) -> Self {
        Self { notifier, timeout }
    }

    /// How long systemd waits for a ping.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How often progress is checked (and a ping sent): half the timeout,
    /// as systemd advises, so one late tick is not fatal.
    pub fn interval(&self) -> Duration {
        (self.timeout / 2).max(Duration::from_millis(1))
    }

    /// Until `shutdown` fires: every [`interval`](Self::interval), sends
    /// `WATCHDOG=1` if `progress` advanced since the previous tick (or a
    /// [`Progress::pause`] is under way), and nothing otherwise.
    pub async fn run(self, progress: Progress, shutdown: CancellationToken) {
        let interval = self.interval();
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut seen = progress.steps();
        let mut stalled = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let steps = progress.steps();
            let moved = steps != seen || progress.is_pausing();
            seen = steps;
            if !moved {
                if !stalled {
                    tracing::warn!(
                        timeout_ms = self.timeout.as_millis() as u64,
                        "no progress since the last watchdog tick; not pinging systemd, which restarts \
                         the service if this lasts"
                    );
                }
                stalled = true;
                continue;
            }
            if stalled {
                tracing::info!("progress again; watchdog pings resumed");
                stalled = false;
            }
            if let Err(err) = self.notifier.watchdog() {
                tracing::warn!(error = %err, "cannot ping the systemd watchdog");
            }
        }
    }
}

/// Runs the watchdog systemd asked for until `shutdown` fires; returns at
/// once when there is none (no `WatchdogSec=`, not under systemd).
pub(crate) async fn run_watchdog(progress: Progress, shutdown: CancellationToken) {
    match Watchdog::from_env() {
        Ok(Some(watchdog)) => {
            tracing::info!(timeout_ms = watchdog.timeout().as_millis() as u64, "systemd watchdog on");
            watchdog.run(progress, shutdown).await;
        }
        Ok(None) => {}
        Err(err) => tracing::warn!(error = %err, "systemd watchdog off"),
    }
}
