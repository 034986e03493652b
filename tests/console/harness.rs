//! Shared by tests/console.rs and tests/console_browser.rs: a `strato serve`
//! with two users (admin from the environment, `bob` from a config file)
//! and a plain HTTP client that keeps the console's session cookie.
#![allow(dead_code)]

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioExecutor;

use super::common::{Server, Strato};

pub const BOB_AK: &str = "STRBOBACCESSKEY00002";
pub const BOB_SK: &str = "bob-secret-key-abcdefghijklmnopqrstuvwx";
/// A third user who owns nothing yet.
pub const CAROL_AK: &str = "STRCAROLACCESSKEY003";
pub const CAROL_SK: &str = "carol-secret-key-abcdefghijklmnopqrstuv";

pub struct ConsoleServer {
    pub server: Server,
    _cfg: tempfile::TempDir,
}

impl ConsoleServer {
    pub fn start(env: &[(&str, &str)]) -> ConsoleServer {
        Self::start_with_toml(env, "")
    }

    /// With `toml` appended to the config file.
    pub fn start_with_toml(env: &[(&str, &str)], toml: &str) -> ConsoleServer {
        let cfg = tempfile::tempdir().unwrap();
        let path = cfg.path().join("strato.toml");
        std::fs::write(
            &path,
            format!(
                "[[users]]\nname = \"bob\"\naccess_key = \"{BOB_AK}\"\nsecret_key = \"{BOB_SK}\"\n\
                 [[users]]\nname = \"carol\"\naccess_key = \"{CAROL_AK}\"\nsecret_key = \"{CAROL_SK}\"\n{toml}"
            ),
        )
        .unwrap();
        let path = path.to_string_lossy().into_owned();
        let mut all: Vec<(&str, &str)> = vec![("STRATO_CONFIG", path.as_str())];
        all.extend_from_slice(env);
        let server = Server::start_with(Strato::new("redb"), &all);
        ConsoleServer { server, _cfg: cfg }
    }

    pub fn web(&self) -> Web {
        Web {
            base: self.server.endpoint.clone(),
            cookie: None,
            csrf: None,
        }
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn location(&self) -> String {
        self.headers
            .get("location")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// A browser without JavaScript: one cookie, redirects not followed.
pub struct Web {
    pub base: String,
    pub cookie: Option<String>,
    pub csrf: Option<String>,
}

impl Web {
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Reply {
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build_http::<Full<bytes::Bytes>>();
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            req = req.header("cookie", c);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(bytes::Bytes::from(body))).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(120), client.request(req))
            .await
            .expect("console request timed out")
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, &[], Vec::new()).await
    }

    pub async fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> Reply {
        let body = fields
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        self.send(
            "POST",
            path,
            &[("content-type", "application/x-www-form-urlencoded")],
            body.into_bytes(),
        )
        .await
    }

    /// Sign in as a browser does (the form first, for its sign-in token and
    /// cookie); on success keep the session cookie and its CSRF token.
    pub async fn sign_in(&mut self, ak: &str, sk: &str) -> Reply {
        let form = self.get("/ui/signin").await;
        let token = signin_token_of(&form.text());
        let form_cookie = form
            .headers
            .get("set-cookie")
            .map(|c| c.to_str().unwrap().split(';').next().unwrap().to_string());
        let session = std::mem::replace(&mut self.cookie, form_cookie);
        let r = self
            .post_form(
                "/ui/signin",
                &[
                    ("access_key", ak),
                    ("secret_key", sk),
                    ("signin_token", &token),
                ],
            )
            .await;
        self.cookie = session;
        let session_cookie = r
            .headers
            .get("set-cookie")
            .map(|c| c.to_str().unwrap())
            .filter(|c| c.starts_with("strato_console="));
        if let Some(c) = session_cookie {
            self.cookie = Some(c.split(';').next().unwrap().to_string());
            let page = self.get("/ui/images").await;
            assert_eq!(page.status, 200, "{}", page.text());
            self.csrf = Some(csrf_of(&page.text()));
        }
        r
    }

    pub fn token(&self) -> String {
        self.csrf.clone().expect("signed in")
    }
}

pub fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The sign-in form's hidden token (empty if the page has none).
pub fn signin_token_of(page: &str) -> String {
    let Some(at) = page.find("name=\"signin_token\" value=\"") else {
        return String::new();
    };
    let rest = &page[at + 27..];
    rest[..rest.find('"').unwrap()].to_string()
}

pub fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no CSRF field in {page}"));
    let rest = &page[at + 19..];
    rest[..rest.find('"').unwrap()].to_string()
}
