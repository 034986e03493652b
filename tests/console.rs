//! The web console's HTTP handlers (issue 17) on a real `strato serve`,
//! driven by a plain HTTP client that keeps a cookie: redirects when signed
//! out, sign-in and its refusals, CSRF, per-user visibility, escaping of
//! hostile object names, no secret key in any page, session expiry and
//! sign-out, uploads in parts with their dedup figures, streamed download.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;
#[path = "console/harness.rs"]
mod harness;
#[path = "common/sdk.rs"]
mod sdk;

use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use common::*;
use harness::{enc, ConsoleServer, BOB_AK, BOB_SK};

const PAGES: [&str; 4] = [
    "/ui/images",
    "/ui/repository",
    "/ui/transfers",
    "/ui/health",
];

async fn put(c: &aws_sdk_s3::Client, bucket: &str, key: &str, data: Vec<u8>) {
    c.put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(data))
        .send()
        .await
        .unwrap();
}

async fn exists(c: &aws_sdk_s3::Client, bucket: &str, key: &str) -> bool {
    c.head_object().bucket(bucket).key(key).send().await.is_ok()
}

#[tokio::test]
async fn signed_out_everything_redirects_and_sign_in_works() {
    let cs = ConsoleServer::start(&[]);
    let s = &cs.server;
    let mut web = cs.web();
    for p in PAGES.iter().chain(&[
        "/ui",
        "/ui/",
        "/ui/object?bucket=a&key=b",
        "/ui/download?bucket=a&key=b",
    ]) {
        let r = web.get(p).await;
        assert_eq!(r.status, 303, "{p}");
        assert_eq!(r.location(), "/ui/signin", "{p}");
    }
    let r = web.get("/ui/transfers.json").await;
    assert_eq!(r.status, 303);
    // State-changing requests without a session are refused outright.
    let r = web
        .post_form("/ui/delete", &[("bucket", "x"), ("key", "y")])
        .await;
    assert_eq!(r.status, 401);
    let r = web.get("/ui/signin").await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("name=\"access_key\""));
    assert!(r.text().contains("<label for=\"secret_key\">"));
    for asset in ["/ui/assets/console.css", "/ui/assets/console.js"] {
        assert_eq!(web.get(asset).await.status, 200, "{asset}");
    }

    // Wrong secret, unknown key: refused, no cookie.
    for (ak, sk) in [
        (s.access_key.as_str(), "wrong"),
        ("NOSUCHKEY", s.secret_key.as_str()),
        (s.access_key.as_str(), BOB_SK),
    ] {
        let r = web.sign_in(ak, sk).await;
        assert_eq!(r.status, 401);
        assert!(r
            .headers
            .get_all("set-cookie")
            .iter()
            .all(|c| !c.to_str().unwrap().starts_with("strato_console=")));
        assert!(r.text().contains("Wrong access key or secret key"));
        assert!(web.cookie.is_none());
    }

    // Right keys but not through this console's form (login CSRF: another
    // site posting its own keys into the browser): no token, or a token
    // without its cookie, is refused and makes no session.
    for fields in [
        vec![
            ("access_key", s.access_key.as_str()),
            ("secret_key", s.secret_key.as_str()),
        ],
        vec![
            ("access_key", s.access_key.as_str()),
            ("secret_key", s.secret_key.as_str()),
            ("signin_token", "00ff"),
        ],
    ] {
        let r = web.post_form("/ui/signin", &fields).await;
        assert_eq!(r.status, 403, "{}", r.text());
        assert!(r.text().contains("sign in again"), "{}", r.text());
        assert!(r
            .headers
            .get_all("set-cookie")
            .iter()
            .all(|c| !c.to_str().unwrap().starts_with("strato_console=")));
    }
    let form = web.get("/ui/signin").await;
    let token = harness::signin_token_of(&form.text());
    assert_eq!(token.len(), 64);
    let r = web
        .post_form(
            "/ui/signin",
            &[
                ("access_key", s.access_key.as_str()),
                ("secret_key", s.secret_key.as_str()),
                ("signin_token", token.as_str()),
            ],
        )
        .await;
    assert_eq!(r.status, 403, "a token without its cookie: {}", r.text());

    let r = web.sign_in(&s.access_key, &s.secret_key).await;
    assert_eq!(r.status, 303);
    assert_eq!(r.location(), "/ui/images");
    let cookie = r.headers["set-cookie"].to_str().unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=43200"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let id = web.cookie.clone().unwrap();
    assert_eq!(id.len(), "strato_console=".len() + 64, "{id}");

    let c = sdk::client(s);
    c.create_bucket().bucket("imgs").send().await.unwrap();
    put(&c, "imgs", "disk.img", random_bytes(300_000, 1)).await;
    for p in PAGES {
        let r = web.get(p).await;
        assert_eq!(r.status, 200, "{p}");
        let t = r.text();
        assert!(!t.contains(&s.secret_key), "{p} shows the secret key");
        assert!(t.contains("Sign out"), "{p}");
        assert_eq!(r.headers["cache-control"], "no-store", "{p} may be cached");
        assert!(r.headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'"));
    }
    let page = web.get("/ui/images?bucket=imgs").await.text();
    assert!(
        page.contains(
            "data-key=\"disk.img\" data-size=\"300000\" data-unique=\"300000\" data-shared=\"0\""
        ),
        "{page}"
    );
    let obj = web.get("/ui/object?bucket=imgs&key=disk.img").await;
    assert_eq!(obj.status, 200);
    let t = obj.text();
    assert!(!t.contains(&s.secret_key));
    assert!(t.contains("X-Amz-Signature="), "a presigned URL: {t}");
    // The presigned URL works as printed (HTML-unescaped).
    let at = t.find("id=\"presigned\"").unwrap();
    let v = &t[at..];
    let v = &v[v.find("value=\"").unwrap() + 7..];
    let url = v[..v.find('"').unwrap()].replace("&amp;", "&");
    let (st, _, body) = sdk::raw_request("GET", &url, &[], Vec::new()).await;
    assert_eq!(st, 200, "{url}");
    assert_eq!(body, random_bytes(300_000, 1));
    let j = web.get("/ui/transfers.json").await.json();
    assert!(j["sessions"].is_array());
    // The reserved name cannot be made a bucket through S3.
    assert!(c.create_bucket().bucket("ui").send().await.is_err());
    // The banner's S3 routes are untouched by the console.
    assert!(exists(&c, "imgs", "disk.img").await);
}

#[tokio::test]
async fn post_without_the_csrf_token_is_refused_and_changes_nothing() {
    let cs = ConsoleServer::start(&[]);
    let s = &cs.server;
    let c = sdk::client(s);
    c.create_bucket().bucket("imgs").send().await.unwrap();
    put(&c, "imgs", "keep.img", random_bytes(1000, 2)).await;
    let mut web = cs.web();
    web.sign_in(&s.access_key, &s.secret_key).await;
    let fields = [("bucket", "imgs"), ("key", "keep.img")];
    let r = web.post_form("/ui/delete", &fields).await;
    assert_eq!(r.status, 403);
    let r = web
        .post_form(
            "/ui/delete",
            &[("bucket", "imgs"), ("key", "keep.img"), ("csrf", "0000")],
        )
        .await;
    assert_eq!(r.status, 403);
    let r = web.post_form("/ui/buckets", &[("name", "sneaky")]).await;
    assert_eq!(r.status, 403);
    let r = web
        .send(
            "POST",
            "/ui/upload/start?bucket=imgs&key=x",
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = web.post_form("/ui/signout", &[]).await;
    assert_eq!(r.status, 403);
    assert!(exists(&c, "imgs", "keep.img").await);
    assert!(c.head_bucket().bucket("sneaky").send().await.is_err());
    assert_eq!(web.get("/ui/images").await.status, 200, "still signed in");
    let list = c
        .list_multipart_uploads()
        .bucket("imgs")
        .send()
        .await
        .unwrap();
    assert!(list.uploads().is_empty());

    // The confirmation page, then the delete with the token.
    let confirm = web.get("/ui/delete?bucket=imgs&key=keep.img").await;
    assert_eq!(confirm.status, 200);
    assert!(confirm.text().contains("id=\"confirm-delete\""));
    assert!(exists(&c, "imgs", "keep.img").await, "GET deletes nothing");
    let token = web.token();
    let r = web
        .post_form(
            "/ui/delete",
            &[("bucket", "imgs"), ("key", "keep.img"), ("csrf", &token)],
        )
        .await;
    assert_eq!(r.status, 303);
    assert_eq!(r.location(), "/ui/images?bucket=imgs");
    assert!(!exists(&c, "imgs", "keep.img").await);
    // Deleting it again says it is gone.
    let r = web
        .post_form(
            "/ui/delete",
            &[("bucket", "imgs"), ("key", "keep.img"), ("csrf", &token)],
        )
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn another_users_bucket_is_invisible() {
    let cs = ConsoleServer::start(&[]);
    let s = &cs.server;
    let admin = sdk::client(s);
    let bob = sdk::client_with(&s.endpoint, BOB_AK, BOB_SK);
    admin
        .create_bucket()
        .bucket("admins-images")
        .send()
        .await
        .unwrap();
    put(&admin, "admins-images", "secret.img", random_bytes(5000, 3)).await;
    bob.create_bucket()
        .bucket("bobs-images")
        .send()
        .await
        .unwrap();
    put(&bob, "bobs-images", "mine.img", random_bytes(5000, 4)).await;

    let mut bw = cs.web();
    assert_eq!(bw.sign_in(BOB_AK, BOB_SK).await.status, 303);
    let page = bw.get("/ui/images").await.text();
    assert!(page.contains("bobs-images"));
    assert!(page.contains("mine.img"));
    assert!(!page.contains("admins-images"), "{page}");
    assert!(!page.contains("(admin)"));
    assert!(!page.contains(BOB_SK));
    for p in [
        "/ui/images?bucket=admins-images",
        "/ui/object?bucket=admins-images&key=secret.img",
        "/ui/download?bucket=admins-images&key=secret.img",
        "/ui/delete?bucket=admins-images&key=secret.img",
    ] {
        let r = bw.get(p).await;
        assert_eq!(r.status, 404, "{p}");
        assert!(
            !r.text().contains("secret.img") || p.contains("key="),
            "{p}"
        );
    }
    let token = bw.token();
    let r = bw
        .post_form(
            "/ui/delete",
            &[
                ("bucket", "admins-images"),
                ("key", "secret.img"),
                ("csrf", &token),
            ],
        )
        .await;
    assert_eq!(r.status, 404);
    assert!(exists(&admin, "admins-images", "secret.img").await);
    let r = bw
        .send(
            "POST",
            "/ui/upload/start?bucket=admins-images&key=x",
            &[("x-csrf-token", &token)],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, 404);

    // The admin sees both, with owners.
    let mut aw = cs.web();
    aw.sign_in(&s.access_key, &s.secret_key).await;
    let page = aw.get("/ui/images").await.text();
    assert!(page.contains("admins-images") && page.contains("bobs-images"));
    assert!(page.contains("owner bob"));
    let r = aw.get("/ui/download?bucket=bobs-images&key=mine.img").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, random_bytes(5000, 4));

    // Bob's upload ids are his: the admin cannot add parts to them.
    let bob_token = bw.token();
    let up = bw
        .send(
            "POST",
            "/ui/upload/start?bucket=bobs-images&key=new.img",
            &[("x-csrf-token", &bob_token)],
            Vec::new(),
        )
        .await
        .json();
    let id = up["upload"].as_str().unwrap().to_string();
    let r = aw
        .send(
            "POST",
            &format!("/ui/upload/part?upload={id}&part=1"),
            &[("x-csrf-token", &aw.token())],
            vec![1; 100],
        )
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn hostile_object_names_are_escaped() {
    let cs = ConsoleServer::start(&[]);
    let s = &cs.server;
    let c = sdk::client(s);
    c.create_bucket().bucket("imgs").send().await.unwrap();
    let key = "<script>alert(\"x\")</script>'q&.img";
    put(&c, "imgs", key, b"hello".to_vec()).await;
    let mut web = cs.web();
    web.sign_in(&s.access_key, &s.secret_key).await;
    let pages = [
        "/ui/images?bucket=imgs".to_string(),
        format!("/ui/images?bucket=imgs&prefix={}", enc("<script>")),
        format!("/ui/object?bucket=imgs&key={}", enc(key)),
        format!("/ui/delete?bucket=imgs&key={}", enc(key)),
    ];
    for p in &pages {
        let r = web.get(p).await;
        assert_eq!(r.status, 200, "{p}");
        let t = r.text();
        assert!(!t.contains("<script>alert"), "{p}: {t}");
        assert!(!t.contains("'q&"), "{p}");
        assert!(
            t.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&#39;q&amp;.img"),
            "{p}: {t}"
        );
    }
    let r = web
        .get(&format!("/ui/download?bucket=imgs&key={}", enc(key)))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello");
    let cd = r.headers["content-disposition"].to_str().unwrap();
    // The file name is the key's last path segment, made safe.
    assert!(
        cd.starts_with("attachment; filename=\"script__q_.img\""),
        "{cd}"
    );
    // A hostile bucket name in the query is escaped in the error too.
    let r = web.get("/ui/images?bucket=%3Cscript%3E").await;
    assert_eq!(r.status, 404);
    assert!(!r.text().contains("<script>"));
}

#[tokio::test]
async fn sessions_expire_and_sign_out_invalidates_the_cookie() {
    let cs = ConsoleServer::start(&[("STRATO_CONSOLE_SESSION_SECS", "2")]);
    let s = &cs.server;
    let mut web = cs.web();
    let r = web.sign_in(&s.access_key, &s.secret_key).await;
    assert!(r.headers["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=2"));
    assert_eq!(web.get("/ui/images").await.status, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = web.get("/ui/images").await;
    assert_eq!(r.status, 303);
    assert_eq!(r.location(), "/ui/signin");

    let mut web = cs.web();
    web.sign_in(&s.access_key, &s.secret_key).await;
    let old = web.cookie.clone();
    let token = web.token();
    let r = web.post_form("/ui/signout", &[("csrf", &token)]).await;
    assert_eq!(r.status, 303);
    assert_eq!(r.location(), "/ui/signin");
    assert!(r.headers["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    web.cookie = old;
    let r = web.get("/ui/images").await;
    assert_eq!(r.status, 303, "the old cookie is dead");
}

#[tokio::test]
async fn failed_sign_ins_are_throttled() {
    let cs = ConsoleServer::start(&[]);
    let s = &cs.server;
    let mut web = cs.web();
    for _ in 0..5 {
        assert_eq!(web.sign_in(BOB_AK, "guess").await.status, 401);
    }
    let r = web.sign_in(BOB_AK, BOB_SK).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(web.cookie.is_none());
    // Other users are not locked out by them.
    assert_eq!(web.sign_in(&s.access_key, &s.secret_key).await.status, 303);
}

#[tokio::test]
async fn upload_in_parts_reports_new_bytes_and_downloads_back() {
    let cs = ConsoleServer::start(&[]);
    let s = &cs.server;
    let mut web = cs.web();
    web.sign_in(&s.access_key, &s.secret_key).await;
    let token = web.token();
    let r = web
        .post_form("/ui/buckets", &[("name", "uploads"), ("csrf", &token)])
        .await;
    assert_eq!(r.status, 303);
    let r = web
        .post_form("/ui/buckets", &[("name", "Bad_Name"), ("csrf", &token)])
        .await;
    assert_eq!(r.status, 400);
    let data = random_bytes(12 << 20, 9);
    let part = 8 << 20;
    let h = [("x-csrf-token", token.as_str())];
    let mut results = Vec::new();
    for key in ["a.img", "b.img"] {
        let up = web
            .send(
                "POST",
                &format!("/ui/upload/start?bucket=uploads&key={key}"),
                &h,
                Vec::new(),
            )
            .await;
        assert_eq!(up.status, 200, "{}", up.text());
        let id = up.json()["upload"].as_str().unwrap().to_string();
        for (i, piece) in data.chunks(part).enumerate() {
            let r = web
                .send(
                    "POST",
                    &format!("/ui/upload/part?upload={id}&part={}", i + 1),
                    &h,
                    piece.to_vec(),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.json()["size"], piece.len() as u64);
        }
        let done = web
            .send(
                "POST",
                &format!("/ui/upload/complete?upload={id}"),
                &h,
                Vec::new(),
            )
            .await;
        assert_eq!(done.status, 200, "{}", done.text());
        results.push(done.json());
    }
    assert_eq!(results[0]["size"], data.len() as u64);
    assert_eq!(results[0]["new_bytes"], data.len() as u64);
    assert_eq!(results[1]["new_bytes"], 0, "{}", results[1]);
    assert_eq!(results[1]["shared_bytes"], data.len() as u64);
    assert_eq!(results[1]["unique_bytes"], 0);
    let page = web.get("/ui/images?bucket=uploads").await.text();
    assert!(page.contains(&format!(
        "data-key=\"a.img\" data-size=\"{}\" data-unique=\"0\" data-shared=\"{}\"",
        data.len(),
        data.len()
    )));
    let got = web.get("/ui/download?bucket=uploads&key=a.img").await;
    assert_eq!(got.status, 200);
    assert_eq!(
        got.headers["content-length"].to_str().unwrap(),
        data.len().to_string()
    );
    assert!(got.body == data, "downloaded bytes differ");
    // The same object through S3.
    let c = sdk::client(s);
    let o = c
        .get_object()
        .bucket("uploads")
        .key("b.img")
        .send()
        .await
        .unwrap();
    assert!(sdk::body_bytes(o).await == data);
    // A first upload may make its bucket, but not a reserved or taken one.
    let first = web
        .send(
            "POST",
            "/ui/upload/start?bucket=fresh&key=k&create=1",
            &h,
            Vec::new(),
        )
        .await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert!(web
        .get("/ui/images")
        .await
        .text()
        .contains("data-bucket=\"fresh\""));
    let r = web
        .send(
            "POST",
            "/ui/upload/start?bucket=ui&key=k&create=1",
            &h,
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, 400);
    let bob = sdk::client_with(&s.endpoint, BOB_AK, BOB_SK);
    bob.create_bucket().bucket("bobs").send().await.unwrap();
    let mut bw = cs.web();
    bw.sign_in(BOB_AK, BOB_SK).await;
    let bt = bw.token();
    let r = bw
        .send(
            "POST",
            "/ui/upload/start?bucket=uploads&key=k&create=1",
            &[("x-csrf-token", bt.as_str())],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    // An upload id that is not ours / not there.
    let r = web
        .send(
            "POST",
            "/ui/upload/part?upload=nope&part=1",
            &h,
            vec![0; 10],
        )
        .await;
    assert_eq!(r.status, 404);
    // The repository page counts both objects and shows the dedup.
    let repo = web.get("/ui/repository").await.text();
    assert!(repo.contains(&format!("id=\"logical\" data-bytes=\"{}\"", 2 * data.len())));
    assert!(repo.contains(&format!("id=\"stored\" data-bytes=\"{}\"", data.len())));
    assert!(repo.contains("2.00×"));
    assert!(repo.contains("none recorded yet; run <code>strato fsck</code>"));
    // The key nodes check signed sessions against, as `strato trust-key` prints it.
    let key = s.strato.ok(&["trust-key"]);
    assert!(
        repo.contains(&format!("<code>{}</code>", key.trim())),
        "{key} not in the repository page"
    );
}

#[tokio::test]
async fn transfers_show_pulls_claims_and_rates_to_their_user() {
    use strato::chunk_api::{ChunkClient, Keys};
    let cs = ConsoleServer::start(&[]);
    let s = &cs.server;
    let c = sdk::client(s);
    c.create_bucket().bucket("golden").send().await.unwrap();
    put(&c, "golden", "base.img", random_bytes(4 << 20, 5)).await;
    let api = ChunkClient::new(
        &s.endpoint,
        Keys {
            access_key: s.access_key.clone(),
            secret_key: s.secret_key.clone(),
        },
        "us-east-1",
    )
    .unwrap();
    // A pull: the manifest, what is here already, then every chunk.
    let m = api.manifest("golden", "base.img").await.unwrap();
    let ids: Vec<_> = m.chunks.iter().map(|c| c.id).collect();
    assert_eq!(api.have(&ids).await.unwrap().len(), ids.len());
    for id in &ids[..ids.len() / 2] {
        api.get_chunk(id).await.unwrap();
    }
    api.claim("migration-7", &ids).await.unwrap();

    let mut web = cs.web();
    web.sign_in(&s.access_key, &s.secret_key).await;
    let j = web.get("/ui/transfers.json").await.json();
    let sessions = j["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{j}");
    let p = &sessions[0];
    assert_eq!(p["kind"], "pull");
    assert_eq!(p["bucket"], "golden");
    assert_eq!(p["key"], "base.img");
    assert_eq!(p["user"], "admin");
    assert_eq!(p["total_bytes"], 4 << 20);
    assert_eq!(p["running"], true);
    let progress = p["progress"].as_f64().unwrap();
    assert!(progress > 0.2 && progress < 0.9, "{progress}");
    assert_eq!(j["have_ids_total"], ids.len());
    assert_eq!(j["claim_ids_total"], ids.len());
    assert_eq!(j["groups"][0]["group"], "migration-7");
    assert_eq!(j["groups"][0]["ids_asked"], ids.len());
    // The rest of the chunks: the pull is done.
    for id in &ids[ids.len() / 2..] {
        api.get_chunk(id).await.unwrap();
    }
    let j = web.get("/ui/transfers.json").await.json();
    assert_eq!(j["sessions"][0]["progress"], 1.0);
    assert_eq!(j["sessions"][0]["running"], false);
    assert!(j["get_bytes_total"].as_u64().unwrap() >= 4 << 20);
    // Rates come from samples every 2 s.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let j = web.get("/ui/transfers.json").await.json();
    assert!(j["get_bytes_per_s"].as_f64().unwrap() >= 0.0);

    // Bob sees neither the admin's session nor the claim groups.
    let mut bw = cs.web();
    bw.sign_in(BOB_AK, BOB_SK).await;
    let j = bw.get("/ui/transfers.json").await.json();
    assert!(j["sessions"].as_array().unwrap().is_empty(), "{j}");
    assert!(j["groups"].as_array().unwrap().is_empty(), "{j}");
}

#[tokio::test]
async fn size_history_is_sampled_and_bounded() {
    let cs = ConsoleServer::start(&[
        ("STRATO_CONSOLE_SAMPLE_SECS", "1"),
        ("STRATO_CONSOLE_KEEP_SAMPLES", "3"),
    ]);
    let s = &cs.server;
    let c = sdk::client(s);
    c.create_bucket().bucket("imgs").send().await.unwrap();
    put(&c, "imgs", "a.img", random_bytes(100_000, 6)).await;
    let mut web = cs.web();
    web.sign_in(&s.access_key, &s.secret_key).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let page = loop {
        let page = web.get("/ui/repository").await.text();
        if page.contains("3 samples") && page.contains("logical: <span class=\"num\">97.7 KiB") {
            break page;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no 3 samples with the object: {page}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(page.contains("<polyline"));
    // Never more than the bound, however long it runs.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let page = web.get("/ui/repository").await.text();
    assert!(page.contains("3 samples"), "{page}");
    // A bad setting stops serve with a clear error before it listens.
    let out = common::Strato::new("redb")
        .cmd()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("STRATO_CONSOLE_SESSION_SECS", "soon")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("STRATO_CONSOLE_SESSION_SECS=\"soon\" is not a whole number"),
        "{err}"
    );
}

#[tokio::test]
async fn virtual_host_requests_for_ui_keys_stay_with_s3() {
    let cs = ConsoleServer::start_with_toml(&[], "[s3]\nvirtual_host_domain = \"s3.test\"\n");
    let s = &cs.server;
    let port = s.endpoint.rsplit(':').next().unwrap();
    // BUCKET.DOMAIN/ui/... names the object "ui/..." of that bucket: S3
    // answers (unsigned, so AccessDenied), not the console.
    let vhost = format!("imgs.s3.test:{port}");
    let (st, h, body) = sdk::raw_request(
        "GET",
        &format!("{}/ui/images", s.endpoint),
        &[("host", vhost.as_str())],
        Vec::new(),
    )
    .await;
    assert_eq!(st, 403, "{}", String::from_utf8_lossy(&body));
    assert!(h.get("location").is_none());
    assert!(String::from_utf8_lossy(&body).contains("AccessDenied"));
    // The server's own host gets the console.
    let r = cs.web().get("/ui/images").await;
    assert_eq!(r.status, 303);
    assert_eq!(r.location(), "/ui/signin");
}

#[test]
fn over_tls_the_cookie_is_secure() {
    let curl = require_tool("curl");
    let cs = ConsoleServer::start(&[("STRATO_TLS_SELF_SIGNED", "true")]);
    let s = &cs.server;
    assert!(s.endpoint.starts_with("https://"), "{}", s.endpoint);
    // The form first (its token and cookie), as a browser would.
    let jar = s.strato.dir.path().join("curl-cookies");
    std::fs::create_dir_all(s.strato.dir.path()).unwrap();
    let form = std::process::Command::new(&curl)
        .args(["-sk", "--max-time", "20", "-c"])
        .arg(&jar)
        .arg(format!("{}/ui/signin", s.endpoint))
        .output()
        .unwrap();
    let token = harness::signin_token_of(&String::from_utf8_lossy(&form.stdout));
    assert_eq!(token.len(), 64, "{form:?}");
    let out = std::process::Command::new(curl)
        .args(["-sk", "-i", "--max-time", "20", "-b"])
        .arg(&jar)
        .arg("--data-urlencode")
        .arg(format!("signin_token={token}"))
        .arg("--data-urlencode")
        .arg(format!("access_key={}", s.access_key))
        .arg("--data-urlencode")
        .arg(format!("secret_key={}", s.secret_key))
        .arg(format!("{}/ui/signin", s.endpoint))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("HTTP/1.1 303") || text.starts_with("HTTP/2 303"),
        "{text}"
    );
    let cookie = text
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie: {text}"));
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Secure"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
}
