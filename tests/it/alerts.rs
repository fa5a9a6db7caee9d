//! The Prometheus alert rules in `deploy/prometheus` are valid, and each
//! alert fires on the series it must and stays quiet on the others, as
//! `alerts_test.yml` spells out. `promtool` does both checks.
//!
//! `promtool` comes from the Debian package `prometheus`. Without it these
//! tests fail at once, naming the package, never skip: rules nobody checks
//! drift from the metrics.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helpers::tools::PROMTOOL;

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus")
}

/// Runs `promtool args` in `dir`; returns whether it succeeded and its output.
fn promtool(dir: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new(PROMTOOL.path())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|err| panic!("could not run promtool: {err}"));
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[test]
fn alert_rules_are_valid() {
    let (ok, output) = promtool(&rules_dir(), &["check", "rules", "alerts.yml"]);
    assert!(ok, "promtool check rules failed:\n{output}");
}

#[test]
fn alert_rules_pass_their_unit_tests() {
    let (ok, output) = promtool(&rules_dir(), &["test", "rules", "alerts_test.yml"]);
    assert!(ok, "promtool test rules failed:\n{output}");
}

/// Every alert has a severity, a summary and a description, and is named
/// in the unit tests.
#[test]
fn every_alert_is_described_and_tested() {
    let read = |name: &str| {
        let path = rules_dir().join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
    };
    let (rules, tests) = (read("alerts.yml"), read("alerts_test.yml"));
    let alerts: Vec<&str> = rules.lines().filter_map(|line| line.trim().strip_prefix("- alert: ")).collect();
    assert!(!alerts.is_empty(), "no alert found in alerts.yml");
    for field in ["severity:", "summary:", "description:"] {
        let count = rules.lines().filter(|line| line.trim().starts_with(field)).count();
        assert_eq!(count, alerts.len(), "{} alerts but {count} `{field}` lines", alerts.len());
    }
    for alert in alerts {
        assert!(tests.contains(&format!("alertname: {alert}\n")), "{alert} has no unit test in alerts_test.yml");
    }
}

/// The unit tests can fail: with one threshold changed, they do, naming the
/// alert. (Guards against a harness that ignores promtool's verdict.)
#[test]
fn a_changed_threshold_fails_the_unit_tests() {
    let scratch = Scratch(std::env::temp_dir().join(format!("fleet-alerts-{}", std::process::id())));
    let dir = &scratch.0;
    std::fs::create_dir_all(dir).expect("temp dir");
    let rules = std::fs::read_to_string(rules_dir().join("alerts.yml")).expect("alerts.yml");
    let broken = rules.replace(
        "max by (job) (fleet_oldest_pending_age_seconds) > 300",
        "max by (job) (fleet_oldest_pending_age_seconds) > 600",
    );
    assert_ne!(broken, rules, "the threshold to change is no longer in alerts.yml");
    std::fs::write(dir.join("alerts.yml"), broken).expect("write rules");
    std::fs::copy(rules_dir().join("alerts_test.yml"), dir.join("alerts_test.yml")).expect("copy tests");
    let (ok, output) = promtool(dir, &["test", "rules", "alerts_test.yml"]);
    assert!(!ok, "the unit tests passed with a changed threshold:\n{output}");
    assert!(output.contains("FleetOldestPendingTooOld"), "{output}");
}

/// A directory removed when dropped, also when a test panics in it.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
