//! The operator's web console at `/ui/` on `strato serve`'s own port:
//! images and what they cost after dedup, the repository's size over time,
//! transfers as the server sees them, and request health.
//!
//! Server-rendered HTML with one small script and one stylesheet, both
//! embedded with `include_str!`: a plain `cargo build` gives a working
//! console with nothing to install (no node toolchain, no front-end build)
//! and nothing fetched from a CDN at run time. The script only does what
//! HTML cannot: upload a file in parts with a progress bar, poll the
//! transfers JSON, copy a URL. Every page works with the keyboard alone.
//!
//! Sign-in takes an S3 user's access key and secret (the same users as the
//! S3 API); the first user ([`crate::server::FIRST_USER`]) is the admin and
//! sees every bucket, the others only their own. Sessions live in memory
//! (a restart signs everyone out) behind a random 256-bit cookie
//! (HttpOnly, SameSite=Strict, Path=/ui, Secure over TLS); each has a CSRF
//! token every POST must carry (form field `csrf` or header
//! `X-CSRF-Token`). Settings (environment, read at start):
//! `STRATO_CONSOLE_SESSION_SECS` (lifetime, 43200), `STRATO_CONSOLE_IDLE_SECS`
//! (idle timeout, 3600), `STRATO_CONSOLE_SAMPLE_SECS` (size history interval,
//! 300), `STRATO_CONSOLE_KEEP_SAMPLES` (2016: a week at 5 min) and
//! `STRATO_CONSOLE_HEALTH_SECS` (health sampling, 5).

mod activity;
mod health;
mod html;
mod session;

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use parking_lot::Mutex;
use s3_compat::{ExtraRoute, ResponseBody};
use tracing::Instrument;

use crate::config::UserConfig;
use crate::store::{now_ms, HistorySample, Precondition, ProfileChoice, Store, StoreError, Target};

use html::{bytes as fmt_bytes, esc, grouped, q, time_ms, Nav};
use session::{Expiry, Identity, Sessions, SignInError};

const CSS: &str = include_str!("console.css");
const JS: &str = include_str!("console.js");

/// Form bodies (sign-in, delete, create bucket) are small.
const MAX_FORM: usize = 64 << 10;
/// One upload part from the page (it sends 8 MiB).
const MAX_PART: u64 = 64 << 20;
/// Console uploads in flight at once.
const MAX_UPLOADS: usize = 256;
/// Objects listed per page.
const PAGE: usize = 200;
/// The upload form's fields (the script in console.js drives them).
const UPLOAD_FIELDS: &str = "<p><label for=\"file\">File</label> <input id=\"file\" type=\"file\" required></p>\
     <p><label for=\"key\">Key</label> <input id=\"key\" name=\"key\" placeholder=\"the file's name\"></p>\
     <p><button type=\"submit\" id=\"upload-button\">Upload</button> \
     <progress id=\"upload-progress\" max=\"1\" value=\"0\" aria-label=\"Upload progress\"></progress> \
     <span id=\"upload-percent\" class=\"num\">0%</span></p>\
     <p id=\"upload-status\" role=\"status\" aria-live=\"polite\"></p>";
/// Presigned URLs are valid this long.
const PRESIGN_SECS: u64 = 24 * 3600;

/// Console settings (see the module doc for the environment variables).
#[derive(Debug, Clone)]
pub struct ConsoleOptions {
    pub expiry: Expiry,
    pub sample_every: Duration,
    pub keep_samples: usize,
    /// How often the Health page's figures are sampled.
    pub health_every: Duration,
    /// The keys distribution-session tickets are signed under (one per
    /// line), shown on the Repository page; set by serve.
    pub trust_keys: Option<String>,
}

impl ConsoleOptions {
    pub fn from_env() -> anyhow::Result<ConsoleOptions> {
        fn num(name: &str, default: u64) -> anyhow::Result<u64> {
            match std::env::var(name) {
                Ok(v) if !v.trim().is_empty() => {
                    let n: u64 = v
                        .trim()
                        .parse()
                        .map_err(|_| anyhow::anyhow!("{name}={v:?} is not a whole number"))?;
                    anyhow::ensure!(n > 0, "{name} must be at least 1");
                    Ok(n)
                }
                _ => Ok(default),
            }
        }
        Ok(ConsoleOptions {
            expiry: Expiry {
                lifetime: Duration::from_secs(num("STRATO_CONSOLE_SESSION_SECS", 43_200)?),
                idle: Duration::from_secs(num("STRATO_CONSOLE_IDLE_SECS", 3600)?),
            },
            sample_every: Duration::from_secs(num("STRATO_CONSOLE_SAMPLE_SECS", 300)?),
            keep_samples: num("STRATO_CONSOLE_KEEP_SAMPLES", 2016)? as usize,
            health_every: Duration::from_secs(num("STRATO_CONSOLE_HEALTH_SECS", 5)?),
            trust_keys: None,
        })
    }
}

/// An upload started from the page: who may add parts, and the new bytes
/// its parts added so far (reported when it completes).
struct UploadState {
    user: String,
    bucket: String,
    key: String,
    started: Instant,
    new_bytes: u64,
    parts: std::collections::BTreeMap<u32, String>,
}

#[derive(Clone)]
pub struct Console {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    sessions: Sessions,
    activity: Arc<activity::Activity>,
    health: health::History,
    metrics: Arc<super::metrics::Metrics>,
    region: String,
    tls: bool,
    /// S3's virtual-host domain, if set (see [`Console::owns`]).
    vhost_domain: Option<String>,
    opts: ConsoleOptions,
    uploads: Mutex<HashMap<String, UploadState>>,
}

type Resp = http::Response<ResponseBody>;

fn full(b: impl Into<Bytes>) -> ResponseBody {
    http_body_util::Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Headers every console response carries: no caching of private pages,
/// no framing, scripts and styles only from the console itself.
fn secure_headers(h: &mut http::HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

fn respond(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = http::Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    secure_headers(r.headers_mut());
    r
}

fn html_resp(status: StatusCode, body: String) -> Resp {
    respond(status, "text/html; charset=utf-8", body)
}

fn json_resp(status: StatusCode, v: &serde_json::Value) -> Resp {
    respond(status, "application/json", v.to_string())
}

fn json_err(status: StatusCode, msg: &str) -> Resp {
    json_resp(status, &serde_json::json!({ "error": msg }))
}

fn redirect(to: &str) -> Resp {
    let mut r = respond(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "");
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// Read a whole (small) body, refusing one over `limit`.
async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, String> {
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the request: {e}"))?;
        if let Ok(d) = frame.into_data() {
            buf.extend_from_slice(&d);
            if buf.len() > limit {
                return Err(format!("request body larger than {limit} bytes"));
            }
        }
    }
    Ok(buf.freeze())
}

/// Status and message for a store error shown to a console user.
fn store_status(e: &StoreError) -> StatusCode {
    match e {
        StoreError::NoSuchBucket(_)
        | StoreError::NoSuchKey { .. }
        | StoreError::NoSuchUpload(_) => StatusCode::NOT_FOUND,
        StoreError::InvalidBucketName { .. }
        | StoreError::InvalidArgument(_)
        | StoreError::InvalidPart(_)
        | StoreError::InvalidPartOrder
        | StoreError::EntityTooSmall { .. } => StatusCode::BAD_REQUEST,
        StoreError::BucketAlreadyExists(_) | StoreError::BucketAlreadyOwnedByYou(_) => {
            StatusCode::CONFLICT
        }
        StoreError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Aborted(format!("store task failed: {e}")))?
}

impl Console {
    pub fn new(
        store: Store,
        users: Vec<UserConfig>,
        metrics: Arc<super::metrics::Metrics>,
        s3: &s3_compat::S3Config,
        tls: bool,
        opts: ConsoleOptions,
    ) -> Console {
        Console {
            inner: Arc::new(Inner {
                activity: activity::Activity::new(store.clone()),
                store,
                sessions: Sessions::new(users, opts.expiry),
                health: health::History::default(),
                metrics,
                region: s3.region.clone(),
                tls,
                vhost_domain: s3.virtual_host_domain.clone(),
                opts,
                uploads: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The chunk API route wrapped so the Transfers page sees its calls.
    pub fn observe(&self, chunk_route: Arc<dyn ExtraRoute>) -> Arc<dyn ExtraRoute> {
        self.inner.activity.observe(chunk_route)
    }

    /// Whether the request is the console's: `/ui` on the server's own
    /// host. With virtual-host addressing, `BUCKET.DOMAIN/ui/...` is an
    /// object key of that bucket and stays with S3.
    pub fn owns<B>(&self, req: &hyper::Request<B>) -> bool {
        let path = req.uri().path();
        if !(path == "/ui" || path.starts_with("/ui/")) {
            return false;
        }
        let Some(domain) = &self.inner.vhost_domain else {
            return true;
        };
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let host = host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                host
            }
        });
        !host
            .to_ascii_lowercase()
            .ends_with(&format!(".{}", domain.to_ascii_lowercase()))
    }

    /// Background samplers: transfer rates, health figures, size history.
    pub fn spawn_samplers(&self) {
        let me = self.inner.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(activity::RATE_EVERY);
            loop {
                tick.tick().await;
                me.activity.sample_rates();
            }
        });
        let me = self.inner.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.opts.health_every);
            loop {
                tick.tick().await;
                let (store, metrics) = (me.store.clone(), me.metrics.clone());
                // Both read the store (the chunk count, the uploads table).
                let r = blocking(move || Ok((store.count_uploads()?, metrics.render()))).await;
                match r {
                    Ok((uploads, text)) => me.health.push(health::parse(&text, now_ms(), uploads)),
                    Err(e) => tracing::debug!("console: health sample failed: {e}"),
                }
            }
        });
        let me = self.inner.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.opts.sample_every);
            loop {
                tick.tick().await;
                let store = me.store.clone();
                let keep = me.opts.keep_samples;
                let r = blocking(move || {
                    let s = store.stats()?;
                    store.record_history(
                        HistorySample {
                            time_ms: now_ms(),
                            logical_bytes: s.logical_bytes,
                            stored_bytes: s.stored_bytes,
                            segment_bytes: s.segment_bytes_on_disk,
                            objects: s.objects,
                        },
                        keep,
                    )
                })
                .await;
                if let Err(e) = r {
                    tracing::warn!("console: recording the size history failed: {e}");
                }
            }
        });
    }

    pub async fn handle(&self, req: hyper::Request<Incoming>) -> Resp {
        let span =
            tracing::debug_span!("console", method = %req.method(), path = %req.uri().path());
        self.route(req).instrument(span).await
    }

    async fn route(&self, req: hyper::Request<Incoming>) -> Resp {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let query = html::parse_form(req.uri().query().unwrap_or(""));
        match (&method, path.as_str()) {
            (&Method::GET, "/ui/assets/console.css") => {
                return respond(StatusCode::OK, "text/css; charset=utf-8", CSS)
            }
            (&Method::GET, "/ui/assets/console.js") => {
                return respond(StatusCode::OK, "text/javascript; charset=utf-8", JS)
            }
            (&Method::GET, "/ui/signin") => {
                if self.session(&req).is_some() {
                    return redirect("/ui/images");
                }
                return self.signin_page(StatusCode::OK, "");
            }
            (&Method::POST, "/ui/signin") => return self.signin(req).await,
            _ => {}
        }
        let Some((sid, who)) = self.session(&req) else {
            return if method == Method::GET {
                redirect("/ui/signin")
            } else {
                json_err(StatusCode::UNAUTHORIZED, "sign in first")
            };
        };
        if method == Method::POST {
            return self.post(req, &path, &query, &sid, &who).await;
        }
        if method != Method::GET {
            return json_err(StatusCode::METHOD_NOT_ALLOWED, "GET or POST only");
        }
        let nav = Nav {
            user: who.user.clone(),
            admin: who.admin,
            csrf: who.csrf.clone(),
        };
        match path.as_str() {
            "/ui" | "/ui/" => redirect("/ui/images"),
            "/ui/images" => self.images(&who, &nav, &query).await,
            "/ui/object" => self.object(&req, &who, &nav, &query).await,
            "/ui/download" => self.download(&who, &query).await,
            "/ui/delete" => self.confirm_delete(&who, &nav, &query).await,
            "/ui/repository" => self.repository(&nav).await,
            "/ui/transfers" => self.transfers(&nav),
            "/ui/transfers.json" => {
                let snap = self.inner.activity.snapshot(&who.user, who.admin);
                json_resp(
                    StatusCode::OK,
                    &serde_json::to_value(&snap).unwrap_or_default(),
                )
            }
            "/ui/health" => self.health(&nav, query.contains_key("fragment")),
            _ => html_resp(
                StatusCode::NOT_FOUND,
                html::page("Not found", "", Some(&nav), "<p>No such page.</p>"),
            ),
        }
    }

    fn session(&self, req: &hyper::Request<Incoming>) -> Option<(String, Identity)> {
        req.headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|h| {
                let id = session::cookie_value(h)?;
                self.inner
                    .sessions
                    .lookup(id)
                    .map(|who| (id.to_string(), who))
            })
    }

    fn cookie(&self, value: &str, max_age: u64) -> String {
        format!(
            "{}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
            session::COOKIE,
            if self.inner.tls { "; Secure" } else { "" }
        )
    }

    fn signin_page(&self, status: StatusCode, error: &str) -> Resp {
        let token = session::random_hex();
        let mut m = String::new();
        if !error.is_empty() {
            let _ = write!(
                m,
                "<p class=\"error\" role=\"alert\" id=\"signin-error\">{}</p>",
                esc(error)
            );
        }
        m.push_str(
            "<form method=\"post\" action=\"/ui/signin\" class=\"signin\">\
             <p><label for=\"access_key\">Access key</label>\
             <input id=\"access_key\" name=\"access_key\" autocomplete=\"username\" required autofocus></p>\
             <p><label for=\"secret_key\">Secret key</label>\
             <input id=\"secret_key\" name=\"secret_key\" type=\"password\" autocomplete=\"current-password\" required></p>\
             <p><button type=\"submit\">Sign in</button></p>",
        );
        let _ = write!(
            m,
            "<input type=\"hidden\" name=\"signin_token\" value=\"{token}\"></form>\
             <p class=\"hint\">The keys <code>strato serve</code> printed, or any S3 user's.</p>"
        );
        let mut r = html_resp(status, html::page("Sign in", "", None, &m));
        let cookie = format!(
            "{}={token}; Path=/ui/signin; HttpOnly; SameSite=Strict; Max-Age=3600{}",
            session::SIGNIN_COOKIE,
            if self.inner.tls { "; Secure" } else { "" }
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
        r
    }

    async fn signin(&self, req: hyper::Request<Incoming>) -> Resp {
        let form_cookie = req
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|h| session::named_cookie(h, session::SIGNIN_COOKIE))
            .map(str::to_string);
        let body = match read_body(req.into_body(), MAX_FORM).await {
            Ok(b) => b,
            Err(e) => return self.signin_page(StatusCode::BAD_REQUEST, &e),
        };
        let f = html::parse_form(&String::from_utf8_lossy(&body));
        let same_form = match (form_cookie, f.get("signin_token")) {
            (Some(c), Some(t)) => session::ct_eq(&c, t),
            _ => false,
        };
        if !same_form {
            return self.signin_page(
                StatusCode::FORBIDDEN,
                "This sign-in form has expired or did not come from this console; sign in again.",
            );
        }
        let ak = f.get("access_key").map_or("", |s| s.trim());
        let sk = f.get("secret_key").map_or("", String::as_str);
        match self.inner.sessions.sign_in(ak, sk) {
            Ok((id, who)) => {
                tracing::info!(user = %who.user, "console sign-in");
                let mut r = redirect("/ui/images");
                let max_age = self.inner.sessions.expiry().lifetime.as_secs();
                if let Ok(v) = HeaderValue::from_str(&self.cookie(&id, max_age)) {
                    r.headers_mut().insert(header::SET_COOKIE, v);
                }
                r
            }
            Err(SignInError::Refused) => {
                tracing::info!("console sign-in refused");
                self.signin_page(StatusCode::UNAUTHORIZED, "Wrong access key or secret key.")
            }
            Err(SignInError::Throttled) => self.signin_page(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many failed sign-ins; wait a minute and try again.",
            ),
        }
    }

    async fn post(
        &self,
        req: hyper::Request<Incoming>,
        path: &str,
        query: &HashMap<String, String>,
        sid: &str,
        who: &Identity,
    ) -> Resp {
        let header_token = req
            .headers()
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let header_ok = header_token
            .as_deref()
            .is_some_and(|t| session::ct_eq(t, &who.csrf));
        if let Some(rest) = path.strip_prefix("/ui/upload/") {
            // Upload bodies are file bytes: the token travels in the header.
            if !header_ok {
                return json_err(StatusCode::FORBIDDEN, "missing or wrong CSRF token");
            }
            return self.upload(rest, req, query, who).await;
        }
        let body = match read_body(req.into_body(), MAX_FORM).await {
            Ok(b) => b,
            Err(e) => return json_err(StatusCode::BAD_REQUEST, &e),
        };
        let form = html::parse_form(&String::from_utf8_lossy(&body));
        let form_ok = form
            .get("csrf")
            .is_some_and(|t| session::ct_eq(t, &who.csrf));
        if !(header_ok || form_ok) {
            return html_resp(
                StatusCode::FORBIDDEN,
                html::page(
                    "Refused",
                    "",
                    None,
                    "<p class=\"error\" role=\"alert\">The request did not carry this session's \
                     CSRF token; nothing was changed. <a href=\"/ui/images\">Back</a></p>",
                ),
            );
        }
        match path {
            "/ui/signout" => {
                self.inner.sessions.sign_out(sid);
                let mut r = redirect("/ui/signin");
                if let Ok(v) = HeaderValue::from_str(&self.cookie("", 0)) {
                    r.headers_mut().insert(header::SET_COOKIE, v);
                }
                r
            }
            "/ui/delete" => self.delete(who, &form).await,
            "/ui/buckets" => self.create_bucket(who, &form).await,
            _ => json_err(StatusCode::NOT_FOUND, "no such action"),
        }
    }

    /// The bucket if `who` may see it: its owner or the admin. Others get
    /// the same 404 as for a missing bucket, so names are not revealed.
    async fn visible(&self, who: &Identity, bucket: &str) -> Result<(), (StatusCode, String)> {
        let store = self.inner.store.clone();
        let b = bucket.to_string();
        match blocking(move || store.bucket(&b)).await {
            Ok(rec) if who.admin || rec.owner == who.user => Ok(()),
            Ok(_) | Err(StoreError::NoSuchBucket(_)) => {
                Err((StatusCode::NOT_FOUND, format!("no bucket {bucket:?}")))
            }
            Err(e) => Err((store_status(&e), e.to_string())),
        }
    }

    fn error_page(&self, nav: &Nav, status: StatusCode, msg: &str) -> Resp {
        html_resp(
            status,
            html::page(
                "Error",
                "",
                Some(nav),
                &format!(
                    "<p class=\"error\" role=\"alert\">{}</p><p><a href=\"/ui/images\">Back to images</a></p>",
                    esc(msg)
                ),
            ),
        )
    }

    async fn images(&self, who: &Identity, nav: &Nav, query: &HashMap<String, String>) -> Resp {
        let store = self.inner.store.clone();
        let buckets = match blocking(move || store.list_buckets()).await {
            Ok(b) => b,
            Err(e) => return self.error_page(nav, store_status(&e), &e.to_string()),
        };
        let mine: Vec<_> = buckets
            .into_iter()
            .filter(|(_, r)| who.admin || r.owner == who.user)
            .collect();
        let selected = query
            .get("bucket")
            .filter(|b| !b.is_empty())
            .cloned()
            .or_else(|| mine.first().map(|(n, _)| n.clone()));
        let prefix = query.get("prefix").cloned().unwrap_or_default();
        let mut m = String::new();
        m.push_str("<section aria-labelledby=\"buckets-h\"><h2 id=\"buckets-h\">Buckets</h2>");
        if mine.is_empty() {
            m.push_str("<p>No buckets yet.</p>");
        } else {
            m.push_str("<ul class=\"buckets\" id=\"buckets\">");
            for (name, rec) in &mine {
                let cur = if Some(name) == selected.as_ref() {
                    " aria-current=\"true\""
                } else {
                    ""
                };
                let _ = write!(
                    m,
                    "<li><a href=\"/ui/images?bucket={}\"{cur} data-bucket=\"{}\">{}</a>{}</li>",
                    q(name),
                    esc(name),
                    esc(name),
                    if who.admin {
                        format!(" <span class=\"owner\">owner {}</span>", esc(&rec.owner))
                    } else {
                        String::new()
                    }
                );
            }
            m.push_str("</ul>");
        }
        let _ = write!(
            m,
            "<form method=\"post\" action=\"/ui/buckets\" class=\"inline\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <label for=\"new-bucket\">New bucket</label> \
             <input id=\"new-bucket\" name=\"name\" required \
             title=\"3 to 63 lower-case letters, digits, dots and hyphens\"> \
             <button type=\"submit\">Create</button></form></section>",
            esc(&who.csrf)
        );
        let Some(bucket) = selected else {
            // A first visit: the upload makes the bucket, so signing in and
            // uploading an image is all it takes.
            let _ = write!(
                m,
                "<section aria-labelledby=\"upload-h\"><h2 id=\"upload-h\">Upload an image</h2>\
                 <form id=\"upload\" data-bucket=\"\" data-csrf=\"{c}\" class=\"upload\">\
                 <p><label for=\"upload-bucket\">Into the bucket (made if missing)</label> \
                 <input id=\"upload-bucket\" value=\"images\" required></p>{UPLOAD_FIELDS}</form></section>",
                c = esc(&who.csrf)
            );
            return html_resp(
                StatusCode::OK,
                html::page("Images", "images", Some(nav), &m),
            );
        };
        if let Err((st, msg)) = self.visible(who, &bucket).await {
            return self.error_page(nav, st, &msg);
        }
        let store = self.inner.store.clone();
        let (b, p) = (bucket.clone(), prefix.clone());
        let listing = blocking(move || {
            let (objs, more) = store.list_objects(&b, &p, None, PAGE)?;
            let mut out = Vec::with_capacity(objs.len());
            for (key, rec) in objs {
                let cost = store.object_cost(&b, &key).ok();
                out.push((key, rec, cost));
            }
            Ok((out, more))
        })
        .await;
        let (objects, more) = match listing {
            Ok(x) => x,
            Err(e) => return self.error_page(nav, store_status(&e), &e.to_string()),
        };
        let _ = write!(
            m,
            "<section aria-labelledby=\"objects-h\"><h2 id=\"objects-h\">Objects in {b}</h2>\
             <form method=\"get\" action=\"/ui/images\" class=\"inline\" role=\"search\">\
             <input type=\"hidden\" name=\"bucket\" value=\"{b}\">\
             <label for=\"prefix\">Key prefix</label> <input id=\"prefix\" name=\"prefix\" value=\"{p}\"> \
             <button type=\"submit\">Search</button></form>",
            b = esc(&bucket),
            p = esc(&prefix)
        );
        m.push_str("<div class=\"scroll\" id=\"objects\"><table><thead><tr><th scope=\"col\">Key</th>\
             <th scope=\"col\" class=\"n\">Size</th><th scope=\"col\" class=\"n\">Only here</th>\
             <th scope=\"col\" class=\"n\">Shared</th><th scope=\"col\">Profile</th>\
             <th scope=\"col\" class=\"n\">Chunks</th><th scope=\"col\">ETag</th><th scope=\"col\">Modified</th>\
             </tr></thead><tbody>");
        if objects.is_empty() {
            m.push_str("<tr><td colspan=\"8\">No objects");
            if !prefix.is_empty() {
                m.push_str(" with this prefix");
            }
            m.push_str(".</td></tr>");
        }
        for (key, rec, cost) in &objects {
            let (unique, shared, chunks) =
                cost.as_ref()
                    .map_or(("?".to_string(), "?".to_string(), "?".to_string()), |c| {
                        (
                            fmt_bytes(c.unique_bytes),
                            fmt_bytes(c.shared_bytes),
                            format!("{} ({} distinct)", c.chunks, c.distinct_chunks),
                        )
                    });
            let _ = write!(
                m,
                "<tr data-key=\"{k}\" data-size=\"{size}\" data-unique=\"{u}\" data-shared=\"{s}\">\
                 <td><a href=\"/ui/object?bucket={qb}&amp;key={qk}\">{k}</a></td>\
                 <td class=\"n\">{sz}</td><td class=\"n\">{unique}</td><td class=\"n\">{shared}</td>\
                 <td>{prof}</td><td class=\"n\">{chunks}</td><td><code>{etag}</code></td><td>{t}</td></tr>",
                k = esc(key),
                size = rec.size,
                u = cost.as_ref().map_or(0, |c| c.unique_bytes),
                s = cost.as_ref().map_or(0, |c| c.shared_bytes),
                qb = q(&bucket),
                qk = q(key),
                sz = fmt_bytes(rec.size),
                prof = esc(&rec.profile),
                etag = esc(&rec.etag),
                t = time_ms(rec.modified_ms),
            );
        }
        m.push_str("</tbody></table></div>");
        if more {
            let _ = write!(
                m,
                "<p>Only the first {PAGE} objects are shown; narrow the prefix to see others.</p>"
            );
        }
        m.push_str("</section>");
        let _ = write!(
            m,
            "<section aria-labelledby=\"upload-h\"><h2 id=\"upload-h\">Upload to {b}</h2>\
             <form id=\"upload\" data-bucket=\"{b}\" data-csrf=\"{c}\" class=\"upload\">{UPLOAD_FIELDS}</form>\
             <noscript><p>Uploading from the page needs JavaScript; S3 tools work without it.</p></noscript></section>",
            b = esc(&bucket),
            c = esc(&who.csrf)
        );
        html_resp(
            StatusCode::OK,
            html::page("Images", "images", Some(nav), &m),
        )
    }

    fn bucket_key(query: &HashMap<String, String>) -> Option<(String, String)> {
        let b = query.get("bucket").filter(|b| !b.is_empty())?;
        let k = query.get("key").filter(|k| !k.is_empty())?;
        Some((b.clone(), k.clone()))
    }

    async fn object(
        &self,
        req: &hyper::Request<Incoming>,
        who: &Identity,
        nav: &Nav,
        query: &HashMap<String, String>,
    ) -> Resp {
        let Some((bucket, key)) = Self::bucket_key(query) else {
            return self.error_page(nav, StatusCode::BAD_REQUEST, "bucket and key are required");
        };
        if let Err((st, msg)) = self.visible(who, &bucket).await {
            return self.error_page(nav, st, &msg);
        }
        let store = self.inner.store.clone();
        let (b, k) = (bucket.clone(), key.clone());
        let r = blocking(move || Ok((store.head(&b, &k)?, store.object_cost(&b, &k)?))).await;
        let (rec, cost) = match r {
            Ok(x) => x,
            Err(e) => return self.error_page(nav, store_status(&e), &e.to_string()),
        };
        // The URL the browser reached us at, so the presigned URL works from
        // where the operator is; only shown to this user.
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| {
                h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
            })
            .unwrap_or("127.0.0.1");
        let endpoint = format!("{}://{host}", if self.inner.tls { "https" } else { "http" });
        let presigned = chunk_api::client::ChunkClient::new(
            &endpoint,
            chunk_api::client::Keys {
                access_key: who.access_key.clone(),
                secret_key: who.secret_key.clone(),
            },
            &self.inner.region,
        )
        .and_then(|c| c.presign_get(&bucket, &key, Duration::from_secs(PRESIGN_SECS)));
        let mut m = String::new();
        let _ = write!(
            m,
            "<dl class=\"facts\" id=\"facts\">\
             <dt>Bucket</dt><dd>{b}</dd><dt>Key</dt><dd>{k}</dd>\
             <dt>Size</dt><dd class=\"num\">{size} ({sizeg} bytes)</dd>\
             <dt>Stored only for this object</dt><dd class=\"num\" id=\"unique\" data-bytes=\"{u}\">{ub}</dd>\
             <dt>Shared with other objects</dt><dd class=\"num\" id=\"shared\" data-bytes=\"{s}\">{sb}</dd>\
             <dt>Zero runs (not stored)</dt><dd class=\"num\">{zb}</dd>\
             <dt>Chunking profile</dt><dd>{prof}</dd>\
             <dt>Chunks</dt><dd class=\"num\">{chunks} ({distinct} distinct)</dd>\
             <dt>ETag</dt><dd><code>{etag}</code></dd><dt>Parts</dt><dd>{parts}</dd>\
             <dt>Modified</dt><dd>{t}</dd></dl>",
            b = esc(&bucket),
            k = esc(&key),
            size = fmt_bytes(rec.size),
            sizeg = grouped(rec.size),
            u = cost.unique_bytes,
            ub = fmt_bytes(cost.unique_bytes),
            s = cost.shared_bytes,
            sb = fmt_bytes(cost.shared_bytes),
            zb = fmt_bytes(cost.zero_bytes),
            prof = esc(&rec.profile),
            chunks = cost.chunks,
            distinct = cost.distinct_chunks,
            etag = esc(&rec.etag),
            parts = rec.parts,
            t = time_ms(rec.modified_ms),
        );
        let _ = write!(
            m,
            "<p><a class=\"button\" id=\"download\" href=\"/ui/download?bucket={qb}&amp;key={qk}\" download>Download</a> \
             <a class=\"button danger\" href=\"/ui/delete?bucket={qb}&amp;key={qk}\">Delete…</a></p>",
            qb = q(&bucket),
            qk = q(&key)
        );
        match presigned {
            Ok(url) => {
                let _ = write!(
                    m,
                    "<p><label for=\"presigned\">Presigned GET URL (valid 24 h, e.g. for QEMU's curl backing file)</label><br>\
                     <input id=\"presigned\" class=\"url\" readonly value=\"{}\"> \
                     <button type=\"button\" data-copy=\"presigned\">Copy</button> \
                     <span class=\"copied\" role=\"status\" aria-live=\"polite\"></span></p>",
                    esc(&url)
                );
            }
            Err(e) => {
                let _ = write!(
                    m,
                    "<p class=\"error\">No presigned URL: {}</p>",
                    esc(&e.to_string())
                );
            }
        }
        let _ = write!(
            m,
            "<p><a href=\"/ui/images?bucket={}\">Back to {}</a></p>",
            q(&bucket),
            esc(&bucket)
        );
        html_resp(
            StatusCode::OK,
            html::page("Object", "images", Some(nav), &m),
        )
    }

    /// The object's bytes, streamed from the store as they are read (a
    /// bounded channel from the blocking reader; never the whole object).
    async fn download(&self, who: &Identity, query: &HashMap<String, String>) -> Resp {
        let Some((bucket, key)) = Self::bucket_key(query) else {
            return json_err(StatusCode::BAD_REQUEST, "bucket and key are required");
        };
        if let Err((st, msg)) = self.visible(who, &bucket).await {
            return json_err(st, &msg);
        }
        let store = self.inner.store.clone();
        let (b, k) = (bucket.clone(), key.clone());
        let reader = match blocking(move || store.read(&b, &k, None)).await {
            Ok(r) => r,
            Err(e) => return json_err(store_status(&e), &e.to_string()),
        };
        let size = reader.record().size;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, StoreError>>(4);
        tokio::task::spawn_blocking(move || {
            for piece in reader {
                let stop = piece.is_err();
                if tx.blocking_send(piece).is_err() || stop {
                    break;
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let body = http_body_util::StreamBody::new(futures::StreamExt::map(stream, |r| {
            r.map(hyper::body::Frame::data)
                .map_err(|e| Box::new(e) as s3_compat::BoxError)
        }))
        .boxed_unsync();
        let mut r = http::Response::new(body);
        let h = r.headers_mut();
        secure_headers(h);
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        let name = key.rsplit('/').next().unwrap_or(&key);
        let ascii: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if let Ok(v) = HeaderValue::from_str(&format!(
            "attachment; filename=\"{ascii}\"; filename*=UTF-8''{}",
            q(name)
        )) {
            h.insert(header::CONTENT_DISPOSITION, v);
        }
        r
    }

    async fn confirm_delete(
        &self,
        who: &Identity,
        nav: &Nav,
        query: &HashMap<String, String>,
    ) -> Resp {
        let Some((bucket, key)) = Self::bucket_key(query) else {
            return self.error_page(nav, StatusCode::BAD_REQUEST, "bucket and key are required");
        };
        if let Err((st, msg)) = self.visible(who, &bucket).await {
            return self.error_page(nav, st, &msg);
        }
        let m = format!(
            "<p>Delete <strong>{k}</strong> from <strong>{b}</strong>? Chunks no other object uses are \
             reclaimed by the next GC.</p>\
             <form method=\"post\" action=\"/ui/delete\"><input type=\"hidden\" name=\"csrf\" value=\"{c}\">\
             <input type=\"hidden\" name=\"bucket\" value=\"{b}\"><input type=\"hidden\" name=\"key\" value=\"{k}\">\
             <button type=\"submit\" class=\"danger\" id=\"confirm-delete\">Delete</button> \
             <a href=\"/ui/object?bucket={qb}&amp;key={qk}\">Cancel</a></form>",
            k = esc(&key),
            b = esc(&bucket),
            c = esc(&who.csrf),
            qb = q(&bucket),
            qk = q(&key)
        );
        html_resp(
            StatusCode::OK,
            html::page("Delete object", "images", Some(nav), &m),
        )
    }

    async fn delete(&self, who: &Identity, form: &HashMap<String, String>) -> Resp {
        let nav = Nav {
            user: who.user.clone(),
            admin: who.admin,
            csrf: who.csrf.clone(),
        };
        let Some((bucket, key)) = Self::bucket_key(form) else {
            return self.error_page(&nav, StatusCode::BAD_REQUEST, "bucket and key are required");
        };
        if let Err((st, msg)) = self.visible(who, &bucket).await {
            return self.error_page(&nav, st, &msg);
        }
        let store = self.inner.store.clone();
        let (b, k) = (bucket.clone(), key.clone());
        // S3 deletes of a missing key succeed; the console says so instead.
        match blocking(move || {
            store.head(&b, &k)?;
            store.delete_object(&b, &k)
        })
        .await
        {
            Ok(()) => {
                tracing::info!(user = %who.user, bucket = %bucket, key = %key, "console delete");
                redirect(&format!("/ui/images?bucket={}", q(&bucket)))
            }
            Err(e) => self.error_page(&nav, store_status(&e), &e.to_string()),
        }
    }

    async fn create_bucket(&self, who: &Identity, form: &HashMap<String, String>) -> Resp {
        let nav = Nav {
            user: who.user.clone(),
            admin: who.admin,
            csrf: who.csrf.clone(),
        };
        let name = form.get("name").map_or("", |s| s.trim()).to_string();
        if super::RESERVED_BUCKETS.contains(&name.as_str()) {
            return self.error_page(
                &nav,
                StatusCode::BAD_REQUEST,
                &format!("{name:?} is reserved for the server's own routes"),
            );
        }
        let store = self.inner.store.clone();
        let (n, owner) = (name.clone(), who.user.clone());
        match blocking(move || store.create_bucket(&n, &owner)).await {
            Ok(()) | Err(StoreError::BucketAlreadyOwnedByYou(_)) => {
                redirect(&format!("/ui/images?bucket={}", q(&name)))
            }
            Err(e) => self.error_page(&nav, store_status(&e), &e.to_string()),
        }
    }

    /// `start?bucket&key`, `part?upload&part` (body: the part's bytes),
    /// `complete?upload`, `abort?upload`; JSON answers.
    async fn upload(
        &self,
        action: &str,
        req: hyper::Request<Incoming>,
        query: &HashMap<String, String>,
        who: &Identity,
    ) -> Resp {
        match action {
            "start" => {
                let Some((bucket, key)) = Self::bucket_key(query) else {
                    return json_err(StatusCode::BAD_REQUEST, "bucket and key are required");
                };
                if query.get("create").is_some_and(|v| v == "1") {
                    if super::RESERVED_BUCKETS.contains(&bucket.as_str()) {
                        return json_err(
                            StatusCode::BAD_REQUEST,
                            &format!("{bucket:?} is reserved for the server's own routes"),
                        );
                    }
                    let store = self.inner.store.clone();
                    let (b, owner) = (bucket.clone(), who.user.clone());
                    match blocking(move || store.create_bucket(&b, &owner)).await {
                        Ok(()) | Err(StoreError::BucketAlreadyOwnedByYou(_)) => {}
                        Err(e) => return json_err(store_status(&e), &e.to_string()),
                    }
                }
                if let Err((st, msg)) = self.visible(who, &bucket).await {
                    return json_err(st, &msg);
                }
                {
                    let mut ups = self.inner.uploads.lock();
                    ups.retain(|_, u| u.started.elapsed() < Duration::from_secs(24 * 3600));
                    if ups.len() >= MAX_UPLOADS {
                        return json_err(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "too many console uploads in flight; try again later",
                        );
                    }
                }
                let store = self.inner.store.clone();
                let (b, k) = (bucket.clone(), key.clone());
                match blocking(move || store.create_upload(&b, &k, Vec::new(), ProfileChoice::Auto))
                    .await
                {
                    Ok(id) => {
                        self.inner.uploads.lock().insert(
                            id.clone(),
                            UploadState {
                                user: who.user.clone(),
                                bucket,
                                key,
                                started: Instant::now(),
                                new_bytes: 0,
                                parts: Default::default(),
                            },
                        );
                        json_resp(StatusCode::OK, &serde_json::json!({ "upload": id }))
                    }
                    Err(e) => json_err(store_status(&e), &e.to_string()),
                }
            }
            "part" => {
                let Some(id) = self.own_upload(query, who) else {
                    return json_err(StatusCode::NOT_FOUND, "no such upload of yours");
                };
                let Some(part) = query.get("part").and_then(|p| p.parse::<u32>().ok()) else {
                    return json_err(StatusCode::BAD_REQUEST, "part must be a number");
                };
                match self.ingest_part(&id, part, req.into_body()).await {
                    Ok(c) => {
                        if let Some(u) = self.inner.uploads.lock().get_mut(&id) {
                            u.new_bytes += c.new_bytes;
                            u.parts.insert(part, c.etag.clone());
                        }
                        json_resp(
                            StatusCode::OK,
                            &serde_json::json!({"part": part, "etag": c.etag, "size": c.size, "new_bytes": c.new_bytes}),
                        )
                    }
                    Err((st, msg)) => json_err(st, &msg),
                }
            }
            "complete" => {
                let Some(id) = self.own_upload(query, who) else {
                    return json_err(StatusCode::NOT_FOUND, "no such upload of yours");
                };
                let (parts, new_bytes, bucket, key) = {
                    let ups = self.inner.uploads.lock();
                    let Some(u) = ups.get(&id) else {
                        return json_err(StatusCode::NOT_FOUND, "no such upload of yours");
                    };
                    let parts: Vec<(u32, String)> =
                        u.parts.iter().map(|(n, e)| (*n, e.clone())).collect();
                    (parts, u.new_bytes, u.bucket.clone(), u.key.clone())
                };
                let store = self.inner.store.clone();
                let (uid, b, k) = (id.clone(), bucket.clone(), key.clone());
                let r = blocking(move || {
                    let rec = store.complete_upload(&uid, &parts, &Precondition::None)?;
                    let cost = store.object_cost(&b, &k)?;
                    Ok((rec, cost))
                })
                .await;
                match r {
                    Ok((rec, cost)) => {
                        self.inner.uploads.lock().remove(&id);
                        tracing::info!(user = %who.user, bucket = %bucket, key = %key, size = rec.size, new_bytes, "console upload");
                        json_resp(
                            StatusCode::OK,
                            &serde_json::json!({
                                "bucket": bucket, "key": key, "size": rec.size, "etag": rec.etag,
                                "new_bytes": new_bytes, "unique_bytes": cost.unique_bytes,
                                "shared_bytes": cost.shared_bytes, "chunks": cost.chunks,
                            }),
                        )
                    }
                    Err(e) => json_err(store_status(&e), &e.to_string()),
                }
            }
            "abort" => {
                let Some(id) = self.own_upload(query, who) else {
                    return json_err(StatusCode::NOT_FOUND, "no such upload of yours");
                };
                self.inner.uploads.lock().remove(&id);
                let store = self.inner.store.clone();
                match blocking(move || store.abort_upload(&id)).await {
                    Ok(()) => json_resp(StatusCode::OK, &serde_json::json!({"aborted": true})),
                    Err(e) => json_err(store_status(&e), &e.to_string()),
                }
            }
            _ => json_err(StatusCode::NOT_FOUND, "no such upload action"),
        }
    }

    fn own_upload(&self, query: &HashMap<String, String>, who: &Identity) -> Option<String> {
        let id = query.get("upload")?;
        let ups = self.inner.uploads.lock();
        let u = ups.get(id)?;
        (u.user == who.user).then(|| id.clone())
    }

    /// Stream one part's body into a store writer on the blocking pool: a
    /// bounded channel carries the frames, so at most a few are in memory.
    async fn ingest_part(
        &self,
        upload_id: &str,
        part: u32,
        mut body: Incoming,
    ) -> Result<crate::store::Committed, (StatusCode, String)> {
        let store = self.inner.store.clone();
        let target = Target::Part {
            upload_id: upload_id.to_string(),
            part,
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let worker = tokio::task::spawn_blocking(move || {
            let mut w = store.writer(target, ProfileChoice::Auto)?;
            while let Some(b) = rx.blocking_recv() {
                w.write(b)?;
            }
            w.finish(Vec::new(), None)
        });
        let mut total = 0u64;
        let mut failure: Option<(StatusCode, String)> = None;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Ok(d) = f.into_data() {
                        total += d.len() as u64;
                        if total > MAX_PART {
                            failure = Some((
                                StatusCode::PAYLOAD_TOO_LARGE,
                                format!("a part may hold at most {MAX_PART} bytes"),
                            ));
                            break;
                        }
                        if tx.send(d).await.is_err() {
                            break; // the writer failed; its error follows
                        }
                    }
                }
                Err(e) => {
                    failure = Some((StatusCode::BAD_REQUEST, format!("reading the part: {e}")));
                    break;
                }
            }
        }
        if let Some(f) = failure {
            // Dropping the writer without finish commits nothing.
            drop(tx);
            worker.abort();
            return Err(f);
        }
        drop(tx);
        match worker.await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err((store_status(&e), e.to_string())),
            Err(e) => Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("store task failed: {e}"),
            )),
        }
    }

    async fn repository(&self, nav: &Nav) -> Resp {
        let store = self.inner.store.clone();
        let r = blocking(move || {
            Ok((
                store.stats()?,
                store.history()?,
                store.last_gc()?,
                store.count_uploads()?,
                store.last_fsck()?,
            ))
        })
        .await;
        let (s, hist, gc, uploads, fsck) = match r {
            Ok(x) => x,
            Err(e) => return self.error_page(nav, store_status(&e), &e.to_string()),
        };
        let dead = s.segment_bytes_on_disk.saturating_sub(s.stored_bytes);
        let mut m = String::new();
        let _ = write!(
            m,
            "<dl class=\"facts\" id=\"repo\">\
             <dt>Metadata engine</dt><dd>{engine}</dd>\
             <dt>Storage</dt><dd>{storage}</dd>\
             <dt>Buckets</dt><dd class=\"num\">{buckets}</dd><dt>Objects</dt><dd class=\"num\">{objects}</dd>\
             <dt>Logical bytes</dt><dd class=\"num\" id=\"logical\" data-bytes=\"{lb}\">{l}</dd>\
             <dt>Stored bytes (distinct chunks)</dt><dd class=\"num\" id=\"stored\" data-bytes=\"{sbn}\">{sb}</dd>\
             <dt>Dedup ratio</dt><dd class=\"num\" id=\"ratio\">{ratio:.2}×</dd>\
             <dt>Zero runs (not stored)</dt><dd class=\"num\">{zero}</dd>\
             <dt>Chunks referenced / indexed</dt><dd class=\"num\">{chunks} / {indexed}</dd>\
             <dt>Segments</dt><dd class=\"num\">{segs} ({segb} on disk)</dd>\
             <dt>Dead space in segments</dt><dd class=\"num\">{dead} (reclaimable by GC, plus record headers)</dd>\
             <dt>Open multipart uploads</dt><dd class=\"num\">{uploads}</dd>",
            engine = esc(&s.engine),
            storage = esc(&self.inner.store.storage_description()),
            buckets = s.buckets,
            objects = s.objects,
            lb = s.logical_bytes,
            l = fmt_bytes(s.logical_bytes),
            sbn = s.stored_bytes,
            sb = fmt_bytes(s.stored_bytes),
            ratio = s.dedup_ratio,
            zero = fmt_bytes(s.zero_bytes),
            chunks = s.chunks,
            indexed = s.indexed_chunks,
            segs = s.segments,
            segb = fmt_bytes(s.segment_bytes_on_disk),
            dead = fmt_bytes(dead),
        );
        match gc {
            Some(g) => {
                let _ = write!(
                    m,
                    "<dt>Last GC</dt><dd>{} — reclaimed {} chunks, {}; freed {} on disk; \
                     {} segments compacted, {} deleted; {} expired uploads aborted</dd>",
                    time_ms(g.finished_ms),
                    g.reclaimed_chunks,
                    fmt_bytes(g.reclaimed_bytes),
                    fmt_bytes(g.bytes_freed_on_disk),
                    g.segments_compacted,
                    g.segments_deleted,
                    g.aborted_uploads
                );
            }
            None => m.push_str("<dt>Last GC</dt><dd>none recorded yet</dd>"),
        }
        // Public keys: what chain-agent and mcast recv take as --trust-key.
        let keys = self.inner.opts.trust_keys.as_deref().unwrap_or("");
        if keys.trim().is_empty() {
            m.push_str("<dt>Session signing keys</dt><dd>none published</dd>");
        } else {
            m.push_str("<dt>Session signing keys</dt><dd id=\"trust-keys\">");
            for k in keys.lines().filter(|l| !l.trim().is_empty()) {
                let _ = write!(m, "<code>{}</code><br>", esc(k.trim()));
            }
            m.push_str(
                "<span class=\"hint\">nodes check chain and multicast sessions against these \
                 (<code>--trust-key</code>)</span></dd>",
            );
        }
        match fsck {
            Some(f) => {
                let _ = write!(
                    m,
                    "<dt>Last fsck</dt><dd id=\"fsck\">{} — {} segments, {} chunks ({}) re-hashed, \
                     {} manifests: <strong>{}</strong>",
                    time_ms(f.finished_ms),
                    f.segments,
                    f.chunks_checked,
                    fmt_bytes(f.bytes_checked),
                    f.manifests,
                    if f.problems == 0 {
                        "clean".to_string()
                    } else {
                        format!("{} problem(s)", f.problems)
                    }
                );
                if !f.first_problems.is_empty() {
                    m.push_str("<ul class=\"problems\">");
                    for p in &f.first_problems {
                        let _ = write!(m, "<li>{}</li>", esc(p));
                    }
                    m.push_str("</ul>");
                }
                m.push_str("</dd></dl>");
            }
            None => m.push_str(
                "<dt>Last fsck</dt><dd id=\"fsck\">none recorded yet; run <code>strato fsck</code></dd></dl>",
            ),
        }
        let logical: Vec<(f64, f64)> = hist
            .iter()
            .map(|h| (h.time_ms as f64, h.logical_bytes as f64))
            .collect();
        let stored: Vec<(f64, f64)> = hist
            .iter()
            .map(|h| (h.time_ms as f64, h.stored_bytes as f64))
            .collect();
        m.push_str("<h2>Stored vs logical bytes over time</h2>");
        m.push_str(&html::line_chart(
            "Logical and stored bytes",
            &|v| fmt_bytes(v as u64),
            &[
                html::Series {
                    name: "logical",
                    class: "s1",
                    points: logical,
                },
                html::Series {
                    name: "stored",
                    class: "s2",
                    points: stored,
                },
            ],
        ));
        let _ = write!(
            m,
            "<p class=\"hint\">{} samples, one every {} s{}</p>",
            hist.len(),
            self.inner.opts.sample_every.as_secs(),
            match (hist.first(), hist.last()) {
                (Some(a), Some(b)) => format!(", {} to {}", time_ms(a.time_ms), time_ms(b.time_ms)),
                _ => String::new(),
            }
        );
        if !s.profiles.is_empty() {
            m.push_str(
                "<h2>By chunking profile</h2><div class=\"scroll\"><table><thead><tr>\
                <th scope=\"col\">Profile</th><th scope=\"col\" class=\"n\">Objects</th>\
                <th scope=\"col\" class=\"n\">Logical</th><th scope=\"col\" class=\"n\">Stored</th>\
                <th scope=\"col\" class=\"n\">Chunks</th></tr></thead><tbody>",
            );
            for (name, p) in &s.profiles {
                let _ = write!(
                    m,
                    "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                    esc(name),
                    p.objects,
                    fmt_bytes(p.logical_bytes),
                    fmt_bytes(p.stored_bytes),
                    p.chunks
                );
            }
            m.push_str("</tbody></table></div>");
        }
        html_resp(
            StatusCode::OK,
            html::page("Repository", "repository", Some(nav), &m),
        )
    }

    fn transfers(&self, nav: &Nav) -> Resp {
        let m = "<p>Sessions as the server sees them: tickets issued for chain and multicast \
             sessions, manifest fetches that start a pull, and the chunk bytes served after them \
             (attributed to the same user's newest unfinished session). Updated every 2 s.</p>\
             <dl class=\"rates\" id=\"rates\">\
             <dt>have queries</dt><dd class=\"num\" id=\"rate-have\">–</dd>\
             <dt>chunk bytes served</dt><dd class=\"num\" id=\"rate-get\">–</dd>\
             <dt>chunk bytes received</dt><dd class=\"num\" id=\"rate-put\">–</dd>\
             <dt>claims</dt><dd class=\"num\" id=\"rate-claim\">–</dd></dl>\
             <h2>Sessions</h2><div class=\"scroll\"><table id=\"sessions\" data-src=\"/ui/transfers.json\">\
             <thead><tr><th scope=\"col\">Kind</th><th scope=\"col\">Object</th><th scope=\"col\">Audience</th>\
             <th scope=\"col\">User</th><th scope=\"col\">Started</th><th scope=\"col\" class=\"n\">Served</th>\
             <th scope=\"col\" class=\"progress-col\">Progress</th><th scope=\"col\">State</th></tr></thead>\
             <tbody><tr><td colspan=\"8\">Loading…</td></tr></tbody></table></div>\
             <h2>Migration groups (claims)</h2><div class=\"scroll\"><table id=\"groups\">\
             <thead><tr><th scope=\"col\">Group</th><th scope=\"col\" class=\"n\">Claim requests</th>\
             <th scope=\"col\" class=\"n\">Chunk ids asked</th><th scope=\"col\">Last</th></tr></thead>\
             <tbody><tr><td colspan=\"4\">Loading…</td></tr></tbody></table></div>\
             <p class=\"hint\">Per-node outcomes appear when the sender (<code>strato propagate \
             --endpoint</code>) reports the session's end.</p>";
        html_resp(
            StatusCode::OK,
            html::page("Transfers", "transfers", Some(nav), m),
        )
    }

    fn health(&self, nav: &Nav, fragment: bool) -> Resp {
        let pts = self.inner.health.points();
        let series = |f: &dyn Fn(&health::Point) -> f64| -> Vec<(f64, f64)> {
            pts.iter().map(|p| (p.time_ms as f64, f(p))).collect()
        };
        let mut m = String::from("<div id=\"health\" data-refresh=\"/ui/health?fragment=1\">");
        if let Some(last) = self.inner.health.last() {
            let _ = write!(
                m,
                "<p>Totals since start: <span class=\"num\">{}</span> S3 requests, \
                 <span class=\"num\">{}</span> client errors (4xx), <span class=\"num\">{}</span> \
                 server errors (5xx); <span class=\"num\">{}</span> multipart uploads open.</p>",
                last.requests, last.client_errors, last.server_errors, last.open_uploads
            );
        }
        m.push_str("<div class=\"charts\">");
        m.push_str(&html::line_chart(
            "Requests per second",
            &|v| format!("{v:.1}/s"),
            &[html::Series {
                name: "requests",
                class: "s1",
                points: series(&|p| p.requests_per_s),
            }],
        ));
        m.push_str(&html::line_chart(
            "Errors per second",
            &|v| format!("{v:.2}/s"),
            &[
                html::Series {
                    name: "5xx",
                    class: "s3",
                    points: series(&|p| p.errors_per_s),
                },
                html::Series {
                    name: "4xx",
                    class: "s2",
                    points: series(&|p| p.client_errors_per_s),
                },
            ],
        ));
        m.push_str(&html::line_chart(
            "Latency to response head (histogram bucket bound)",
            &|v| format!("{:.0} ms", v * 1000.0),
            &[
                html::Series {
                    name: "p50",
                    class: "s1",
                    points: series(&|p| p.p50),
                },
                html::Series {
                    name: "p99",
                    class: "s3",
                    points: series(&|p| p.p99),
                },
            ],
        ));
        m.push_str(&html::line_chart(
            "Open multipart uploads",
            &|v| format!("{v:.0}"),
            &[html::Series {
                name: "open",
                class: "s2",
                points: series(&|p| p.open_uploads as f64),
            }],
        ));
        let _ = write!(
            m,
            "</div><p class=\"hint\">One sample every {} s, the last {} kept in memory; the same \
             figures as <a href=\"/metrics\">/metrics</a>.</p></div>",
            self.inner.opts.health_every.as_secs(),
            health::KEEP
        );
        if fragment {
            return html_resp(StatusCode::OK, m);
        }
        html_resp(
            StatusCode::OK,
            html::page("Health", "health", Some(nav), &m),
        )
    }
}
