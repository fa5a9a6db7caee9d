//! The real `fleet` binary as a child process: started with a test's
//! servers and prefix, signalled, and waited for.

use std::time::Duration;

use super::servers::TestContext;

/// The real `fleet` binary, configured for this test's servers and prefix.
pub fn fleet(ctx: &TestContext, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleet"));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("REDIS_URL", &ctx.redis_url)
        .env("DATABASE_URL", &ctx.database_url)
        .env("FLEET_KEY_PREFIX", ctx.prefix.as_str())
        .env("RUST_LOG", "info")
        .envs(ctx.redis_tls.ca_file.iter().map(|file| ("FLEET_REDIS_TLS_CA_FILE", file)))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    command
}

pub fn signal(child: &tokio::process::Child, name: &str) {
    let pid = child.id().expect("the process is running");
    let status = std::process::Command::new("kill").args(["-s", name, &pid.to_string()]).status().expect("kill");
    assert!(status.success());
}

pub async fn wait_exit(child: &mut tokio::process::Child) -> (std::process::ExitStatus, String) {
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the process exits within 20 s")
        .expect("wait");
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut stderr).await.expect("stderr");
    }
    (status, stderr)
}
