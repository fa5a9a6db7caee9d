//! `fleet::systemd` against real Unix datagram sockets standing in for
//! systemd's notify socket: the exact messages, the abstract namespace, and
//! a watchdog that pings while progress moves and falls silent when it
//! stalls.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::Duration;

use fleet::systemd::{Notifier, NotifyError, Progress, Watchdog};
use tokio::net::UnixDatagram;
use tokio_util::sync::CancellationToken;

use crate::helpers::scratch_dir;

/// A bound notify socket in a directory of its own, removed on drop.
struct FakeSystemd {
    dir: PathBuf,
    socket: UnixDatagram,
}

impl FakeSystemd {
    fn bind() -> Self {
        let dir = scratch_dir("notify");
        std::fs::create_dir_all(&dir).expect("create the socket's directory");
        let socket = UnixDatagram::bind(dir.join("notify")).expect("bind the notify socket");
        Self { dir, socket }
    }

    fn notifier(&self) -> Notifier {
        Notifier::at(self.dir.join("notify"))
    }

    /// The next message, waiting at most `wait`.
    async fn next(&self, wait: Duration) -> Option<String> {
        let mut buffer = vec![0; 4096];
        let received = tokio::time::timeout(wait, self.socket.recv(&mut buffer)).await.ok()?;
        let length = received.expect("receive a datagram");
        Some(String::from_utf8(buffer[..length].to_vec()).expect("UTF-8 message"))
    }

    /// Every message that arrives within `during`.
    async fn collect(&self, during: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + during;
        let mut messages = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return messages;
            }
            match self.next(left).await {
                Some(message) => messages.push(message),
                None => return messages,
            }
        }
    }
}

impl Drop for FakeSystemd {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const WAIT: Duration = Duration::from_secs(2);

#[tokio::test]
async fn sends_the_exact_sd_notify_messages() {
    let systemd = FakeSystemd::bind();
    let notifier = systemd.notifier();
    assert!(notifier.is_enabled());

    notifier.ready().expect("READY");
    assert_eq!(systemd.next(WAIT).await.as_deref(), Some("READY=1"));
    notifier.status("applying batches; 3 behind").expect("STATUS");
    assert_eq!(systemd.next(WAIT).await.as_deref(), Some("STATUS=applying batches; 3 behind"));
    notifier.watchdog().expect("WATCHDOG");
    assert_eq!(systemd.next(WAIT).await.as_deref(), Some("WATCHDOG=1"));
    notifier.stopping().expect("STOPPING");
    assert_eq!(systemd.next(WAIT).await.as_deref(), Some("STOPPING=1"));
}

#[tokio::test]
async fn a_status_cannot_smuggle_another_assignment() {
    let systemd = FakeSystemd::bind();
    systemd.notifier().status("draining\nREADY=1").expect("STATUS");
    assert_eq!(systemd.next(WAIT).await.as_deref(), Some("STATUS=draining READY=1"));
}

#[tokio::test]
async fn notify_socket_paths_and_abstract_names_both_reach_the_listener() {
    let systemd = FakeSystemd::bind();
    let path = systemd.dir.join("notify");
    let by_path = Notifier::from_setting(Some(path.as_os_str())).expect("an absolute path");
    by_path.ready().expect("READY through the path");
    assert_eq!(systemd.next(WAIT).await.as_deref(), Some("READY=1"));

    let name = format!("fleet-test-{}", uuid::Uuid::new_v4().simple());
    let abstract_socket = {
        use std::os::linux::net::SocketAddrExt;
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
        let socket = std::os::unix::net::UnixDatagram::bind_addr(&address).expect("bind an abstract socket");
        socket.set_read_timeout(Some(WAIT)).expect("read timeout");
        socket
    };
    let notifier = Notifier::from_setting(Some(OsStr::new(&format!("@{name}")))).expect("an abstract name");
    notifier.ready().expect("READY through the abstract name");
    let mut buffer = [0; 64];
    let length = abstract_socket.recv(&mut buffer).expect("a datagram on the abstract socket");
    assert_eq!(&buffer[..length], b"READY=1");
}

#[test]
fn without_notify_socket_every_message_is_dropped_without_error() {
    for unset in [None, Some(OsStr::new(""))] {
        let notifier = Notifier::from_setting(unset).expect("unset is fine");
        assert!(!notifier.is_enabled());
        notifier.ready().expect("READY goes nowhere");
        notifier.status("anything").expect("STATUS goes nowhere");
        notifier.watchdog().expect("WATCHDOG goes nowhere");
        notifier.stopping().expect("STOPPING goes nowhere");
    }
    assert!(matches!(Notifier::from_setting(Some(OsStr::new("relative/notify"))), Err(NotifyError::InvalidSocket(_))));
}

#[test]
fn a_socket_nobody_listens_on_is_an_error_not_a_panic() {
    let dir = scratch_dir("notify-gone");
    let error = Notifier::at(dir.join("notify")).ready().expect_err("nobody listens");
    assert!(error.to_string().contains("READY=1"), "{error}");
}

#[test]
fn the_watchdog_is_what_watchdog_usec_and_watchdog_pid_ask_for() {
    let notifier = Notifier::at("/run/systemd/notify");
    let ours = 4242;
    let watchdog =
        Watchdog::from_settings(notifier.clone(), Some("30000000"), None, ours).expect("valid").expect("a watchdog");
    assert_eq!(watchdog.timeout(), Duration::from_secs(30));
    assert_eq!(watchdog.interval(), Duration::from_secs(15));
    let for_us = Watchdog::from_settings(notifier.clone(), Some("30000000"), Some("4242"), ours).expect("valid");
    assert!(for_us.is_some(), "WATCHDOG_PID names this process");
    let for_another = Watchdog::from_settings(notifier.clone(), Some("30000000"), Some("1"), ours).expect("valid");
    assert!(for_another.is_none(), "WATCHDOG_PID names another process");
    assert!(Watchdog::from_settings(notifier.clone(), None, None, ours).expect("valid").is_none());
    assert!(Watchdog::from_settings(Notifier::disabled(), Some("30000000"), None, ours).expect("valid").is_none());
    for bad in ["0", "-5", "soon"] {
        assert!(matches!(
            Watchdog::from_settings(notifier.clone(), Some(bad), None, ours),
            Err(NotifyError::InvalidWatchdogUsec(_))
        ));
    }
    assert!(matches!(
        Watchdog::from_settings(notifier, Some("30000000"), Some("me"), ours),
        Err(NotifyError::InvalidWatchdogPid(_))
    ));
}

/// Advances `progress` every 10 ms until the returned token is cancelled.
fn keep_advancing(progress: &Progress) -> CancellationToken {
    let stop = CancellationToken::new();
    let (progress, until) = (progress.clone(), stop.clone());
    tokio::spawn(async move {
        while !until.is_cancelled() {
            progress.advance();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    stop
}

fn only_pings(messages: &[String]) {
    assert!(messages.iter().all(|message| message == "WATCHDOG=1"), "{messages:?}");
}

#[tokio::test]
async fn the_watchdog_pings_while_progress_moves_and_falls_silent_when_it_stalls() {
    let systemd = FakeSystemd::bind();
    // Ticks every 100 ms.
    let watchdog = Watchdog::new(systemd.notifier(), Duration::from_millis(200));
    let progress = Progress::new();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(watchdog.run(progress.clone(), shutdown.clone()));

    let advancing = keep_advancing(&progress);
    let pings = systemd.collect(Duration::from_millis(650)).await;
    only_pings(&pings);
    assert!(pings.len() >= 3, "expected a ping per tick while progressing, got {pings:?}");

    // Stalled: one ping may still be on its way for the last moving tick.
    advancing.cancel();
    let straggler = systemd.collect(Duration::from_millis(350)).await;
    assert!(straggler.len() <= 1, "{straggler:?}");
    let silence = systemd.collect(Duration::from_millis(600)).await;
    assert!(silence.is_empty(), "pinged {} times without progress", silence.len());

    // A single step earns exactly the next tick's ping.
    progress.advance();
    let one = systemd.collect(Duration::from_millis(350)).await;
    assert_eq!(one, ["WATCHDOG=1"]);

    shutdown.cancel();
    tokio::time::timeout(WAIT, task).await.expect("the watchdog stops on shutdown").expect("no panic");
}

#[tokio::test]
async fn a_deliberate_pause_keeps_the_watchdog_pinging() {
    let systemd = FakeSystemd::bind();
    let watchdog = Watchdog::new(systemd.notifier(), Duration::from_millis(200));
    let progress = Progress::new();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(watchdog.run(progress.clone(), shutdown.clone()));

    let pausing = tokio::spawn({
        let progress = progress.clone();
        async move { progress.pause(Duration::from_millis(700)).await }
    });
    let pings = systemd.collect(Duration::from_millis(650)).await;
    only_pings(&pings);
    assert!(pings.len() >= 4, "a 700 ms pause should keep every 100 ms tick pinging, got {pings:?}");
    tokio::time::timeout(WAIT, pausing).await.expect("the pause ends").expect("no panic");

    // The pause is over and nothing else moves: silence again.
    let _ = systemd.collect(Duration::from_millis(250)).await;
    let silence = systemd.collect(Duration::from_millis(500)).await;
    assert!(silence.is_empty(), "pinged {} times after the pause ended", silence.len());

    // A pause cancelled by shutdown (dropped in a select!) ends too.
    let cancelled = progress.clone();
    let _ = tokio::time::timeout(Duration::from_millis(10), cancelled.pause(Duration::from_secs(3600))).await;
    let _ = systemd.collect(Duration::from_millis(250)).await;
    let silence = systemd.collect(Duration::from_millis(500)).await;
    assert!(silence.is_empty(), "a dropped pause still counted: {silence:?}");

    shutdown.cancel();
    tokio::time::timeout(WAIT, task).await.expect("the watchdog stops on shutdown").expect("no panic");
}

/// Every message that arrives within `during`, with when it arrived.
async fn collect_timed(systemd: &FakeSystemd, during: Duration) -> Vec<(tokio::time::Instant, String)> {
    let deadline = tokio::time::Instant::now() + during;
    let mut messages = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match systemd.next(left).await {
            Some(message) if !left.is_zero() => messages.push((tokio::time::Instant::now(), message)),
            _ => return messages,
        }
    }
}

/// The real `fleet worker` under a notify socket and a watchdog, as systemd
/// runs it: `READY=1` once it holds its consumer name, pings while its loop
/// advances (idle reads included), silence while its Redis connection
/// hangs (every client paused with `CLIENT PAUSE`), pings again once it
/// answers, and `STOPPING=1` on SIGTERM.
#[tokio::test]
async fn the_worker_process_is_ready_pings_and_falls_silent_while_its_loop_hangs() {
    let redis_dir = scratch_dir("watchdog-redis");
    let _redis = fleet::local_services::LocalRedis::start(&redis_dir, true).await.expect("start the test's Redis");
    let ctx = crate::helpers::context_on(&_redis.url()).await;
    let systemd = FakeSystemd::bind();
    let mut worker = crate::helpers::fleet(&ctx, &["worker"])
        .env("NOTIFY_SOCKET", systemd.dir.join("notify"))
        .env("WATCHDOG_USEC", "400000")
        .env("FLEET_BLOCK_MS", "100")
        .env("FLEET_CONSUMER_NAME", "watchdog-1")
        .spawn()
        .expect("start fleet worker");

    let mut ready = false;
    for _ in 0..150 {
        match systemd.next(Duration::from_millis(200)).await.as_deref() {
            Some("READY=1") => {
                ready = true;
                break;
            }
            _ => assert!(worker.try_wait().expect("poll the worker").is_none(), "the worker exited before READY=1"),
        }
    }
    assert!(ready, "the worker said READY=1 within 30 s");
    let idle = collect_timed(&systemd, Duration::from_millis(1500)).await;
    let pings = idle.iter().filter(|(_, message)| message == "WATCHDOG=1").count();
    assert!(pings >= 4, "an idle worker pings every 200 ms: {idle:?}");

    let mut redis = ctx.redis.clone();
    let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(3000).arg("ALL").query_async(&mut redis).await.expect("pause");
    let paused_at = tokio::time::Instant::now();
    let hung = collect_timed(&systemd, Duration::from_millis(2800)).await;
    // The reads in flight when the pause began may still return; from then
    // on every read hangs, and the watchdog must fall silent.
    let late: Vec<_> = hung
        .iter()
        .filter(|(at, message)| message == "WATCHDOG=1" && *at - paused_at > Duration::from_millis(1000))
        .collect();
    assert!(late.is_empty(), "no ping while every read hangs: {hung:?}");
    let after = collect_timed(&systemd, Duration::from_millis(2500)).await;
    let pings = after.iter().filter(|(_, message)| message == "WATCHDOG=1").count();
    assert!(pings >= 3, "pings again once Redis answers: {after:?}");

    crate::helpers::signal(&worker, "TERM");
    let stopping = systemd.collect(Duration::from_secs(3)).await;
    assert!(stopping.iter().any(|message| message == "STOPPING=1"), "{stopping:?}");
    let (status, stderr) = crate::helpers::wait_exit(&mut worker).await;
    assert!(status.success(), "{stderr}");
    let _ = std::fs::remove_dir_all(&redis_dir);
}
