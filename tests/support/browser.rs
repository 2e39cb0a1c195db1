//! A real headless browser for the web UI tests: Debian's `chromium`,
//! driven over W3C WebDriver (a standard protocol) by `chromedriver`
//! (Debian's `chromium-driver`, built from the same source as the browser,
//! so their versions always match). The few commands used (session, url,
//! execute, element, value, click, window rect, screenshot) are sent with
//! ureq, the tests' HTTP client: a WebDriver crate (fantoccini) unified
//! dependency features differently and made the test build recompile
//! wasmtime. `just setup-browser` (run by `just test`) installs both
//! programs. The driver is a [`Proc`], killed with the test; every command
//! is bounded in time.

use crate::support::cluster::{Proc, poll};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The bound on one browser command (navigation included).
pub const COMMAND_LIMIT: Duration = Duration::from_secs(30);

pub struct Browser {
    /// `http://127.0.0.1:PORT/session/ID`
    session: String,
    agent: ureq::Agent,
    _driver: Proc,
}

/// Where a program is, on PATH or in /usr/bin.
fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// One W3C WebDriver command: `method` on `url` with a JSON body; its
/// `value`, or a panic naming the command and the driver's error.
fn command(agent: &ureq::Agent, method: &str, url: &str, body: Option<&Value>) -> Value {
    let result = match (method, body) {
        ("GET", _) => agent.get(url).call(),
        ("DELETE", _) => agent.delete(url).call(),
        (_, body) => agent
            .post(url)
            .header("Content-Type", "application/json")
            .send(
                body.unwrap_or(&Value::Object(Default::default()))
                    .to_string(),
            ),
    };
    let mut response = result.unwrap_or_else(|e| panic!("browser: {method} {url}: {e}"));
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    let answer: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("browser: {method} {url}: not JSON ({e}): {text}"));
    assert_eq!(status, 200, "browser: {method} {url} {body:?}: {answer}");
    answer["value"].clone()
}

impl Browser {
    /// Start chromedriver (its logs in `logs`) and a headless chromium
    /// session with a `width`×`height` window and a profile under `logs`.
    pub fn start(logs: &Path, width: u32, height: u32) -> Browser {
        let missing = "chromium and chromedriver are needed: run `just setup-browser` \
                       (apt-get install chromium chromium-driver)";
        let chromium = find("chromium").expect(missing);
        let chromedriver = find("chromedriver").expect(missing);
        let port = free_port();
        let mut cmd = Command::new(chromedriver);
        cmd.arg(format!("--port={port}"));
        let mut driver = Proc::spawn("chromedriver", cmd, logs);
        let base = format!("http://127.0.0.1:{port}");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(COMMAND_LIMIT))
            .build()
            .into();
        poll("chromedriver to answer /status", COMMAND_LIMIT, || {
            if let Some(status) = driver.exited() {
                panic!("chromedriver exited ({status}): {}", driver.stderr_text());
            }
            let mut answer = agent.get(format!("{base}/status")).call().ok()?;
            let text = answer.body_mut().read_to_string().ok()?;
            let status: Value = serde_json::from_str(&text).ok()?;
            (status["value"]["ready"] == Value::Bool(true)).then_some(())
        });
        let profile = logs.join("chromium-profile");
        let capabilities = serde_json::json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": [
                        "--headless=new",
                        // Root (CI) cannot use chromium's sandbox.
                        "--no-sandbox",
                        "--disable-gpu",
                        "--disable-dev-shm-usage",
                        "--hide-scrollbars",
                        "--no-first-run",
                        format!("--window-size={width},{height}"),
                        format!("--user-data-dir={}", profile.display()),
                    ],
                },
            }},
        });
        let session = command(
            &agent,
            "POST",
            &format!("{base}/session"),
            Some(&capabilities),
        );
        let id = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id: {session}"));
        Browser {
            session: format!("{base}/session/{id}"),
            agent,
            _driver: driver,
        }
    }

    fn post(&self, path: &str, body: Value) -> Value {
        command(
            &self.agent,
            "POST",
            &format!("{}{path}", self.session),
            Some(&body),
        )
    }

    fn get(&self, path: &str) -> Value {
        command(&self.agent, "GET", &format!("{}{path}", self.session), None)
    }

    /// Load `url` and wait for its load event.
    pub fn goto(&self, url: &str) {
        self.post("/url", serde_json::json!({ "url": url }));
    }

    /// The address the page is at now (after redirects).
    pub fn url(&self) -> String {
        self.get("/url").as_str().expect("a URL").to_string()
    }

    /// Run `script` (a function body: `return ...`) in the page.
    pub fn eval(&self, script: &str) -> Value {
        self.post(
            "/execute/sync",
            serde_json::json!({ "script": script, "args": [] }),
        )
    }

    /// The id of the element `css` selects.
    fn element(&self, css: &str) -> String {
        let found = self.post(
            "/element",
            serde_json::json!({ "using": "css selector", "value": css }),
        );
        // W3C's element reference key.
        found["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string()
    }

    /// Type `text` into the element `css` selects.
    pub fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css);
        self.post(
            &format!("/element/{element}/value"),
            serde_json::json!({ "text": text }),
        );
    }

    /// Click the element `css` selects (and wait for a navigation it starts).
    pub fn click(&self, css: &str) {
        let element = self.element(css);
        self.post(&format!("/element/{element}/click"), serde_json::json!({}));
    }

    /// Resize the window, then write a PNG of the viewport to `path`.
    pub fn screenshot(&self, path: &Path, width: u32, height: u32) {
        self.post(
            "/window/rect",
            serde_json::json!({ "width": width, "height": height }),
        );
        let encoded = self.get("/screenshot");
        let png = base64_decode(encoded.as_str().expect("base64 PNG"));
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // End the session (and its chromium); the driver is killed after.
        let _ = self.agent.delete(&self.session).call();
    }
}

/// Standard base64 (the screenshot's encoding).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text
        .bytes()
        .filter(|&c| c != b'=' && !c.is_ascii_whitespace())
        .map(value)
        .collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut n = 0u32;
        for (i, d) in chunk.iter().enumerate() {
            n |= u32::from(*d) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

/// Where a test's screenshots go: `TARGET_TMPDIR/webui-screenshots/TEST/`.
pub fn screenshot_dir(test: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("webui-screenshots")
        .join(test)
}
