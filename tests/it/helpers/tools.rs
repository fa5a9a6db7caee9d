//! The programs some tests run beside Redis and Postgres, and the package
//! each comes in. A test that needs a missing one fails at once with a
//! message naming the package; the README's install line installs them all
//! (and `.ci/run` runs that line).

use std::path::PathBuf;

/// A program a test runs, and where it comes from.
pub struct Tool {
    /// Its name on the PATH.
    pub program: &'static str,
    /// Where Debian puts it when it is not on the PATH (`/usr/sbin`).
    pub also_at: &'static [&'static str],
    /// The Debian/Ubuntu package.
    pub debian: &'static str,
    /// The Homebrew formula, where one exists.
    pub homebrew: Option<&'static str>,
}

pub const PROMTOOL: Tool =
    Tool { program: "promtool", also_at: &[], debian: "prometheus", homebrew: Some("prometheus") };
pub const SYSTEMD_ANALYZE: Tool = Tool { program: "systemd-analyze", also_at: &[], debian: "systemd", homebrew: None };
pub const NODE: Tool = Tool { program: "node", also_at: &[], debian: "nodejs", homebrew: Some("node") };
pub const CHROMIUM: Tool = Tool {
    program: "chromium",
    also_at: &["/usr/bin/chromium"],
    debian: "chromium",
    homebrew: Some("--cask chromium"),
};
pub const CHROMEDRIVER: Tool = Tool {
    program: "chromedriver",
    also_at: &["/usr/bin/chromedriver"],
    debian: "chromium-driver",
    homebrew: Some("--cask chromedriver"),
};
pub const PGBOUNCER: Tool = Tool {
    program: "pgbouncer",
    also_at: &["/usr/sbin/pgbouncer", "/opt/homebrew/bin/pgbouncer"],
    debian: "pgbouncer",
    homebrew: Some("pgbouncer"),
};

impl Tool {
    /// The program's path; a missing program fails the test, saying what to install.
    pub fn path(&self) -> PathBuf {
        let on_path = std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join(self.program)).collect::<Vec<_>>())
            .unwrap_or_default();
        on_path
            .into_iter()
            .chain(self.also_at.iter().map(PathBuf::from))
            .find(|path| path.is_file())
            .unwrap_or_else(|| panic!("{}", self.missing()))
    }

    /// What to say when it is missing.
    pub fn missing(&self) -> String {
        let macos = match self.homebrew {
            Some(formula) => format!("; macOS: brew install {formula}"),
            None => "; there is no macOS equivalent, so this test runs on Linux only".to_owned(),
        };
        format!(
            "`{}` is not installed, and this test needs it: apt-get install -y {}{macos} \
             (the README's install line installs every tool the tests need)",
            self.program, self.debian
        )
    }
}
