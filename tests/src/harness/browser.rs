//! Headless Chromium for the tests of the agent's web page: loads a URL,
//! lets its scripts run for a (virtual) while, then returns the DOM as the
//! scripts left it, or a PNG screenshot.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};

/// Virtual time a page gets to fetch its data and draw before the DOM or
/// screenshot is taken (Chromium fast-forwards timers, so this is not
/// wall-clock time).
const VIRTUAL_TIME_BUDGET_MS: u32 = 3000;
/// Wall-clock limit of one Chromium run (start-up included).
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// Where Chromium is: `WEFT_CHROMIUM_BIN`, else `chromium` (Debian) or
/// `chromium-browser` on PATH. Missing, the error says how to install it.
pub fn chromium_binary() -> anyhow::Result<PathBuf> {
    super::binaries::system_tool(
        &["chromium", "chromium-browser"],
        "WEFT_CHROMIUM_BIN",
        "chromium",
        "the service map and CORS tests load pages in headless Chromium",
    )
}

/// The page at `url` after its scripts ran, serialized (`--dump-dom`).
pub async fn dump_dom(url: &str, profile: &Path) -> anyhow::Result<String> {
    let output = chromium(&["--dump-dom".to_owned(), url.to_owned()], profile).await?;
    Ok(String::from_utf8_lossy(&output).into_owned())
}

/// A `width`x`height` PNG screenshot of the page at `url` after its
/// scripts ran, written to `path` and returned.
pub async fn screenshot(
    url: &str,
    path: &Path,
    (width, height): (u32, u32),
    profile: &Path,
) -> anyhow::Result<Vec<u8>> {
    chromium(
        &[
            format!("--screenshot={}", path.display()),
            format!("--window-size={width},{height}"),
            url.to_owned(),
        ],
        profile,
    )
    .await?;
    std::fs::read(path).with_context(|| format!("reading the screenshot {}", path.display()))
}

async fn chromium(args: &[String], profile: &Path) -> anyhow::Result<Vec<u8>> {
    let binary = chromium_binary()?;
    let mut command = tokio::process::Command::new(&binary);
    command
        .args([
            "--headless",
            // Tests run as root in CI, where Chromium's sandbox cannot start.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-extensions",
            "--force-device-scale-factor=1",
            &format!("--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}"),
            &format!("--user-data-dir={}", profile.display()),
        ])
        .args(args)
        .kill_on_drop(true);
    let output = tokio::time::timeout(RUN_TIMEOUT, command.output())
        .await
        .with_context(|| format!("{} did not finish within {RUN_TIMEOUT:?}", binary.display()))?
        .with_context(|| format!("running {}", binary.display()))?;
    if !output.status.success() {
        bail!(
            "{} {args:?} exited with {}:\n{}",
            binary.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output.stdout)
}
