//! `strato serve`: the S3-compatible endpoint over the local store.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use strato::server::{self, tls, Limits, ServeOptions, TlsServer};

use super::Ctx;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (only localhost unless you say otherwise)
    #[arg(long, env = "STRATO_LISTEN")]
    listen: Option<SocketAddr>,
    /// Serve HTTPS with this PEM certificate chain (leaf first; re-read on SIGHUP)
    #[arg(
        long,
        env = "STRATO_TLS_CERT",
        requires = "tls_key",
        conflicts_with = "tls_self_signed"
    )]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM)
    #[arg(long, env = "STRATO_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve HTTPS with a private CA and certificate made in DATA_DIR/tls on first start
    #[arg(long, env = "STRATO_TLS_SELF_SIGNED")]
    tls_self_signed: bool,
}

/// How the port is secured, for the banner.
struct TlsInfo {
    server: Arc<TlsServer>,
    /// The CA file clients should trust, when strato made it.
    ca: Option<PathBuf>,
}

fn tls_setup(ctx: &Ctx, a: &ServeArgs, listen: SocketAddr) -> Result<Option<TlsInfo>> {
    let file = &ctx.file.tls;
    let cert = a.tls_cert.clone().or_else(|| file.cert.clone());
    let key = a.tls_key.clone().or_else(|| file.key.clone());
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsInfo {
            server: Arc::new(TlsServer::load(&cert, &key)?),
            ca: None,
        })),
        (Some(_), None) | (None, Some(_)) => {
            anyhow::bail!("[tls] needs both cert and key (or --tls-cert with --tls-key)")
        }
        (None, None) if a.tls_self_signed || file.self_signed => {
            let made = tls::self_signed(&ctx.data_dir.join("tls"), &tls::names_for(listen))?;
            Ok(Some(TlsInfo {
                server: Arc::new(TlsServer::load(&made.cert, &made.key)?),
                ca: Some(made.ca),
            }))
        }
        (None, None) => Ok(None),
    }
}

pub fn serve(ctx: &Ctx, a: ServeArgs) -> Result<ExitCode> {
    let listen = match a.listen {
        Some(l) => l,
        None => ctx
            .file
            .listen
            .as_deref()
            .unwrap_or("127.0.0.1:9000")
            .parse()
            .context("invalid listen address in the config file")?,
    };
    let env_keys = match (
        std::env::var("STRATO_ACCESS_KEY"),
        std::env::var("STRATO_SECRET_KEY"),
    ) {
        (Ok(a), Ok(s)) if !a.is_empty() && !s.is_empty() => Some((a, s)),
        (Ok(_), Err(_)) | (Err(_), Ok(_)) => {
            anyhow::bail!("set both STRATO_ACCESS_KEY and STRATO_SECRET_KEY, or neither")
        }
        _ => None,
    };
    let tls_info = tls_setup(ctx, &a, listen)?;
    if tls_info.is_none() && !listen.ip().is_loopback() {
        eprintln!(
            "warning: listening on {listen} without TLS: S3 keys' signatures, object data and \
             presigned URLs cross the network in clear; use --tls-cert/--tls-key or --tls-self-signed"
        );
    }
    let mut limits = Limits::default();
    if let Some(n) = ctx.file.tls.max_connections {
        limits.max_connections = n;
    }
    if let Some(s) = ctx.file.tls.header_timeout_secs {
        limits.header_read_timeout = Duration::from_secs(s.max(1));
    }
    if let Some(s) = ctx.file.tls.idle_timeout_secs {
        limits.idle_timeout = Duration::from_secs(s.max(1));
    }
    let store = ctx.open_store()?;
    let storage = store.storage_description();
    let users = server::load_or_create_users(&ctx.data_dir, env_keys, &ctx.file)?;
    let ring = repository_keyring(&ctx.data_dir)?;
    let trust_key = ring.public().to_text();
    let trust_keys = accepted_trust_keys(&ring);
    let opts = ServeOptions {
        listen,
        users: users.clone(),
        gc: ctx.file.gc_options(),
        gc_interval: Some(Duration::from_secs(
            ctx.file.gc.interval_secs.unwrap_or(3600),
        )),
        file: ctx.file.clone(),
        tls: tls_info.as_ref().map(|t| t.server.clone()),
        limits,
        trust_keys: Some(trust_keys),
        session_signer: Some(session_signer(ring)),
    };
    let data_dir = ctx.data_dir.clone();
    let meta = ctx.meta_description();
    let json = ctx.json;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("strato-serve")
        .build()?;
    rt.block_on(server::serve(store, opts, move |addr| {
        print_banner(
            addr,
            &users,
            &data_dir,
            &meta,
            &storage,
            json,
            tls_info.as_ref(),
            &trust_key,
        );
    }))?;
    Ok(ExitCode::SUCCESS)
}

// One line of the banner per argument; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
fn print_banner(
    addr: SocketAddr,
    users: &server::Users,
    data_dir: &std::path::Path,
    meta: &str,
    storage: &str,
    json: bool,
    tls: Option<&TlsInfo>,
    trust_key: &str,
) {
    let first = &users.list[0];
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = format!("{scheme}://{addr}");
    let fingerprint = tls.map(|t| t.server.fingerprint());
    let ca = tls.and_then(|t| t.ca.clone());
    if json {
        println!(
            "{}",
            serde_json::json!({"endpoint": endpoint, "data_dir": data_dir, "metadata": meta, "storage": storage,
                "user": first.name, "console": format!("{endpoint}/ui/"),
                "access_key": first.access_key, "secret_key": first.secret_key,
                "tls_fingerprint": fingerprint, "ca_file": ca, "trust_key": trust_key})
        );
    } else {
        println!("strato serving S3 at {endpoint}");
        println!("  data dir    {}", data_dir.display());
        println!("  metadata    {meta}");
        println!("  storage     {storage}");
        println!("  console     {endpoint}/ui/ (sign in with the keys below)");
        println!(
            "  user        {}{}",
            first.name,
            if users.generated {
                " (keys generated now and kept in the data dir)"
            } else {
                ""
            }
        );
        println!("  access key  {}", first.access_key);
        println!("  secret key  {}", first.secret_key);
        if let Some(fp) = &fingerprint {
            println!("  TLS SHA-256 {fp}");
        }
        if let Some(ca) = &ca {
            println!("  CA file     {} (clients trust this file)", ca.display());
        }
        println!("  trust key   {trust_key} (signs distribution sessions)");
        println!();
        let (ak, sk) = (&first.access_key, &first.secret_key);
        match (&tls, &ca) {
            (None, _) => {
                println!("s3cmd:  s3cmd --host={addr} --host-bucket={addr} --no-ssl --access_key={ak} --secret_key={sk} ls");
                println!("aws:    AWS_ACCESS_KEY_ID={ak} AWS_SECRET_ACCESS_KEY={sk} aws --endpoint-url {endpoint} s3 ls");
            }
            (Some(_), Some(ca)) => {
                let ca = ca.display();
                println!("s3cmd:  s3cmd --host={addr} --host-bucket={addr} --ssl --ca-certs={ca} --access_key={ak} --secret_key={sk} ls");
                println!("aws:    AWS_CA_BUNDLE={ca} AWS_ACCESS_KEY_ID={ak} AWS_SECRET_ACCESS_KEY={sk} aws --endpoint-url {endpoint} s3 ls");
            }
            (Some(_), None) => {
                println!("s3cmd:  s3cmd --host={addr} --host-bucket={addr} --ssl --access_key={ak} --secret_key={sk} ls");
                println!("aws:    AWS_ACCESS_KEY_ID={ak} AWS_SECRET_ACCESS_KEY={sk} aws --endpoint-url {endpoint} s3 ls");
            }
        }
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

/// Tickets signed with the repository's key over the manifest as each
/// distribution mechanism lists it (`distribute::sign_session`).
fn session_signer(ring: strato_trust::Keyring) -> strato::server::chunks::SessionSigner {
    let ring = Arc::new(ring);
    Arc::new(move |doc, audience, lifetime| {
        strato::distribute::sign_session(&ring, doc, audience, lifetime)
    })
}

/// The repository's ticket-signing keyring in DATA_DIR/trust (keys 0600),
/// made on first use.
pub fn repository_keyring(data_dir: &std::path::Path) -> Result<strato_trust::Keyring> {
    let dir = data_dir.join("trust");
    let (ring, made) = strato_trust::Keyring::open_or_create(&dir)
        .with_context(|| format!("opening the repository keyring in {}", dir.display()))?;
    if made {
        tracing::info!("made the repository's signing key in {}", dir.display());
    }
    Ok(ring)
}

/// A distribution session signed with this data directory's own key, for
/// `propagate` and `mcast send` run on the repository host without an
/// endpoint to ask for a ticket.
pub fn sign_local_session(
    data_dir: &std::path::Path,
    doc: &strato::chunk_api::ManifestDoc,
    audience: strato::distribute::Audience,
    lifetime_secs: u64,
) -> Result<chain_broadcast::SessionAuth> {
    let ring = repository_keyring(data_dir)?;
    let lifetime = lifetime_secs.clamp(1, strato::chunk_api::MAX_TICKET_SECS);
    let (ticket, secret) = strato::distribute::sign_session(&ring, doc, audience, lifetime);
    chain_broadcast::SessionAuth::new(ticket, secret).context("signing the session")
}

/// The keys tickets are accepted under now (the current one and retired
/// ones still in their grace time), one per line.
fn accepted_trust_keys(ring: &strato_trust::Keyring) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    ring.accepted(now)
        .iter()
        .map(strato_trust::PublicKey::to_text)
        .collect::<Vec<_>>()
        .join("\n")
}
