//! Signed distribution sessions with real binaries: `strato serve` issues
//! tickets (`POST /chunks/ticket/...`), `strato propagate --endpoint`
//! carries them, `strato chain-agent --trust-key` accepts only what the
//! repository signed for it. The forged, expired, misaddressed and
//! mismatched sessions are sent with the library (a sender that does not
//! play by the rules), against the same agent binaries.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod chain_util;
mod common;
#[path = "console/harness.rs"]
mod harness;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chain_util::{propagate, Agent, Kind};
use chunk_api::{ChunkClient, Keys, TicketGrant, TicketRequest};
use common::*;

const IMAGE: &str = "imgs/vm/base.img";

fn client(s: &Server) -> ChunkClient {
    ChunkClient::new(
        &s.endpoint,
        Keys {
            access_key: s.access_key.clone(),
            secret_key: s.secret_key.clone(),
        },
        "us-east-1",
    )
    .unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn grant(s: &Server, key: &str, nodes: &[&str], lifetime: u64) -> TicketGrant {
    let req = TicketRequest {
        nodes: Some(nodes.iter().map(ToString::to_string).collect()),
        group: None,
        lifetime_secs: Some(lifetime),
    };
    rt().block_on(client(s).ticket("imgs", key, &req)).unwrap()
}

/// Sends `manifest_of`'s image as `imgs/vm/base.img` to `nodes` with
/// `grant`'s ticket (or none): what a sender that does not play by the
/// rules can do. Returns each node's failure reason ("" when it succeeded).
fn send_as(
    s: &Server,
    manifest_of: &TicketGrant,
    session: Option<&TicketGrant>,
    nodes: &[&str],
) -> Vec<String> {
    let nodes: Vec<SocketAddr> = nodes.iter().map(|n| n.parse().unwrap()).collect();
    rt().block_on(async {
        let (src, manifest) = strato::distribute::chain::ChainSource::from_doc(
            Arc::new(client(s)),
            &manifest_of.manifest,
        );
        let opts = chain_broadcast::Options {
            connect_timeout: Duration::from_secs(2),
            io_timeout: Duration::from_secs(10),
            session: session.map(|g| strato::distribute::session_from_grant(g).unwrap()),
            ..chain_broadcast::Options::default()
        };
        let r = chain_broadcast::propagate(src, IMAGE, Arc::new(manifest), &nodes, &opts)
            .await
            .unwrap();
        r.nodes
            .iter()
            .map(|n| n.reason.clone().unwrap_or_default())
            .collect()
    })
}

fn trusting_agent(dir: &Path, key: &str) -> Agent {
    Agent::start_with(&[], "127.0.0.1:0", Kind::Files, dir, &["--trust-key", key])
}

#[test]
fn chain_agents_accept_only_what_the_repository_signed_for_them() {
    let st = Strato::new("redb");
    st.ok(&["mb", "imgs"]);
    let mut data = random_bytes(6 << 20, 41);
    data[1 << 20..3 << 20].fill(0);
    let src = st.dir.path().join("img");
    std::fs::write(&src, &data).unwrap();
    st.put(&src, IMAGE, "block");
    let other = random_bytes(3 << 20, 42);
    std::fs::write(&src, &other).unwrap();
    st.put(&src, "imgs/vm/other.img", "block");
    let trust_key = st.ok(&["trust-key"]).trim().to_string();
    let server = Server::start_with(st, &[]);
    let keys = [
        "--endpoint",
        &server.endpoint,
        "--access-key",
        &server.access_key,
        "--secret-key",
        &server.secret_key,
    ];

    let tmp = tempfile::tempdir().unwrap();
    let mut a = trusting_agent(&tmp.path().join("a"), &trust_key);
    let mut b = trusting_agent(&tmp.path().join("b"), &trust_key);
    let c = trusting_agent(&tmp.path().join("c"), &trust_key);
    let written = |agent: &Agent| agent.dir.join("base.img");

    // Honest: propagate gets the ticket over the chunk API and both take it.
    let nodes = vec![a.addr.clone(), b.addr.clone()];
    let empty = tmp.path().join("no-local-store");
    let (ok, report, stderr) = propagate(&[], &empty, &format!("s3://{IMAGE}"), &nodes, &keys);
    assert!(ok, "{report}\n{stderr}");
    assert_eq!(report["forged_control_frames"], 0, "{report}");
    let want = md5_hex(&data);
    assert_eq!(md5_file(&a.image(IMAGE, tmp.path())), want);
    assert_eq!(md5_file(&b.image(IMAGE, tmp.path())), want);
    // propagate reported the end to the repository: its console shows the
    // session with each node's outcome.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let view = rt.block_on(async {
        let mut web = harness::Web {
            base: server.endpoint.clone(),
            cookie: None,
            csrf: None,
        };
        let r = web.sign_in(&server.access_key, &server.secret_key).await;
        assert_eq!(r.status, 303, "{}", r.text());
        web.get("/ui/transfers.json").await.json()
    });
    let chain = view["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "chain")
        .unwrap_or_else(|| panic!("no chain session in {view}"));
    let nodes = chain["outcome"]["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("{chain}"));
    assert_eq!(nodes.len(), 2, "{chain}");
    assert!(nodes.iter().all(|n| n["ok"] == true), "{chain}");
    assert_eq!(nodes[0]["node"], a.addr.as_str(), "{chain}");
    assert_eq!(chain["running"], false, "{chain}");
    // Reports that make no sense are refused and change nothing.
    let api = client(&server);
    let (bad_kind, missing) = rt.block_on(async {
        let bogus = chunk_api::SessionReport {
            kind: "carrier-pigeon".into(),
            ..Default::default()
        };
        let chain_report = chunk_api::SessionReport {
            kind: "chain".into(),
            ..Default::default()
        };
        (
            api.report("imgs", "vm/base.img", &bogus).await,
            api.report("imgs", "no/such/object", &chain_report).await,
        )
    });
    let e = bad_kind.unwrap_err().to_string();
    assert!(e.contains("kind must be chain, multicast or swarm"), "{e}");
    assert!(missing.is_err());

    // An unsigned session from the same binary is refused.
    let (ok, report, _) = propagate(
        &[],
        &empty,
        &format!("s3://{IMAGE}"),
        std::slice::from_ref(&c.addr),
        &[&keys[..], &["--unsigned"]].concat(),
    );
    assert!(!ok, "{report}");
    let why = report["nodes"][0]["reason"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(why.contains("unsigned session"), "{why}");

    // A repository of its own signing the same image: not a trusted key.
    let rogue = Strato::new("redb");
    rogue.ok(&["mb", "imgs"]);
    std::fs::write(&src, &data).unwrap();
    rogue.put(&src, IMAGE, "block");
    let (ok, report, _) = propagate(
        &[],
        &rogue.data_dir(),
        IMAGE,
        std::slice::from_ref(&c.addr),
        &[],
    );
    assert!(!ok, "{report}");
    let why = report["nodes"][0]["reason"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(why.contains("does not trust"), "{why}");

    // Valid frames, no ticket, from the library.
    let honest_c = grant(&server, "vm/base.img", &[&c.addr], 600);
    let r = send_as(&server, &honest_c, None, &[&c.addr]);
    assert!(r[0].contains("unsigned session"), "{r:?}");

    // An expired ticket replayed.
    let short = grant(&server, "vm/base.img", &[&c.addr], 1);
    std::thread::sleep(Duration::from_millis(2100));
    let r = send_as(&server, &short, Some(&short), &[&c.addr]);
    assert!(r[0].contains("expired"), "{r:?}");

    // A ticket the repository issued for node a, presented to c.
    let for_a = grant(&server, "vm/base.img", &[&a.addr], 600);
    let r = send_as(&server, &for_a, Some(&for_a), &[&c.addr]);
    assert!(r[0].contains("not for"), "{r:?}");

    // The ticket for base.img with other.img's manifest under base.img's name.
    let other_doc = grant(&server, "vm/other.img", &[&c.addr], 600);
    let r = send_as(&server, &other_doc, Some(&honest_c), &[&c.addr]);
    assert!(r[0].contains("manifest does not match"), "{r:?}");

    // Nothing of any refused session was written ...
    assert!(!written(&c).exists(), "a refused session wrote an image");
    let leftovers: Vec<_> = std::fs::read_dir(&c.dir).unwrap().flatten().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // ... and the honest session still goes through on the same agent.
    let r = send_as(&server, &honest_c, Some(&honest_c), &[&c.addr]);
    assert_eq!(r, vec![String::new()]);
    assert_eq!(md5_file(&written(&c)), want);
}

#[test]
fn an_agent_off_loopback_needs_a_trust_key_or_insecure() {
    let tmp = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(strato_bin())
        .env_remove("STRATO_CONFIG")
        .args(["chain-agent", "--listen", "0.0.0.0:0", "--out-dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("without --trust-key"), "{err}");
    assert!(err.contains("--insecure"), "{err}");
}

#[test]
fn ticket_requests_are_checked() {
    let st = Strato::new("redb");
    st.ok(&["mb", "imgs"]);
    let src = st.dir.path().join("img");
    std::fs::write(&src, random_bytes(1 << 20, 43)).unwrap();
    st.put(&src, IMAGE, "block");
    let server = Server::start_with(st, &[]);
    let c = client(&server);
    let rt = rt();
    let ask = |req: TicketRequest| rt.block_on(c.ticket("imgs", "vm/base.img", &req));
    for (req, why) in [
        (TicketRequest::default(), "exactly one of"),
        (
            TicketRequest {
                nodes: Some(vec!["not-an-address".into()]),
                ..TicketRequest::default()
            },
            "not an IP:PORT",
        ),
        (
            TicketRequest {
                group: Some("10.0.0.1:7500".into()),
                ..TicketRequest::default()
            },
            "not a multicast group",
        ),
        (
            TicketRequest {
                nodes: Some(vec!["127.0.0.1:7400".into()]),
                lifetime_secs: Some(365 * 86400),
                ..TicketRequest::default()
            },
            "lifetime",
        ),
    ] {
        let e = ask(req).unwrap_err().to_string();
        assert!(e.contains(why), "{e}");
    }
    let missing = rt.block_on(c.ticket(
        "imgs",
        "vm/nope.img",
        &TicketRequest {
            nodes: Some(vec!["127.0.0.1:7400".into()]),
            ..TicketRequest::default()
        },
    ));
    assert!(missing.is_err());
    // A good one verifies under the published key and carries a matching
    // control secret.
    let g = ask(TicketRequest {
        group: Some("239.1.2.3:7500".into()),
        ..TicketRequest::default()
    })
    .unwrap();
    let keys = rt.block_on(c.trust_keys()).unwrap();
    let trusted = strato::trust::TrustedKeys::from_texts(keys.iter().map(String::as_str)).unwrap();
    let auth = strato::distribute::session_from_grant(&g).unwrap();
    let t = auth
        .ticket()
        .verify(&trusted, strato::trust::now_unix(), "239.1.2.3:7500")
        .unwrap();
    assert_eq!(t.bucket, "imgs");
    assert_eq!(t.size, 1 << 20);
    assert!(t.expires_at <= strato::trust::now_unix() + 3600);
    assert_eq!(
        t.manifest_digest,
        strato::distribute::mcast::manifest_digest(&g.manifest.entries())
    );
}
