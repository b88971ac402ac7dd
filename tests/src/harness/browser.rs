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
    dump_dom_with(url, profile, &[]).await
}

/// [`dump_dom`] with more Chromium flags (`--host-resolver-rules=...`).
pub async fn dump_dom_with(url: &str, profile: &Path, flags: &[String]) -> anyhow::Result<String> {
    let args = [flags, &["--dump-dom".to_owned(), url.to_owned()]].concat();
    let output = chromium(&args, profile).await?;
    Ok(String::from_utf8_lossy(&output).into_owned())
}

/// A page that makes one cross-origin call of the kind that needs a
/// preflight (a PUT with a custom header, with credentials) to `url`, and
/// writes the outcome into its DOM: `status=... service=... served-by=...`
/// from the app's echo, or `blocked: TypeError` when the browser blocks the
/// answer (`fetch` rejects).
pub fn cross_origin_probe(url: &str) -> String {
    format!(
        r#"<!doctype html><title>cors</title><pre id="out">running</pre><script>
async function call() {{
  try {{
    const answer = await fetch("{url}", {{
      method: "PUT", credentials: "include",
      headers: {{ "x-api-key": "k-1", "content-type": "application/json" }},
      body: "{{}}" }});
    const echo = await answer.json();
    return "status=" + answer.status + " service=" + echo.service +
      " served-by=" + answer.headers.get("x-served-by");
  }} catch (error) {{
    return "blocked: " + error.name;
  }}
}}
call().then(outcome => {{ document.getElementById("out").textContent = outcome; }});
</script>"#
    )
}

/// What a [`cross_origin_probe`] page at `url` wrote after its script ran.
pub async fn probe_outcome(url: &str, profile: &Path, flags: &[String]) -> anyhow::Result<String> {
    let dom = dump_dom_with(url, profile, flags).await?;
    let start = dom.find("<pre id=\"out\">").context("no output element")? + 14;
    let end = dom[start..].find("</pre>").context("no end of output")? + start;
    Ok(dom[start..end].to_string())
}

/// Serves `html` at every path on a loopback port, until the test ends.
pub async fn serve_page(html: String) -> anyhow::Result<std::net::SocketAddr> {
    use http_body_util::Full;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let html = bytes::Bytes::from(html);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let html = html.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_request| {
                    let html = html.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .header("content-type", "text/html; charset=utf-8")
                                .body(Full::new(html))
                                .expect("a page"),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
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
