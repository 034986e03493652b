//! `strato serve`: the S3-compatible endpoint over the local store.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use strato::server::{self, ServeOptions};

use super::Ctx;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (only localhost unless you say otherwise)
    #[arg(long, env = "STRATO_LISTEN")]
    listen: Option<SocketAddr>,
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
    let store = ctx.open_store()?;
    let users = server::load_or_create_users(&ctx.data_dir, env_keys, &ctx.file)?;
    let opts = ServeOptions {
        listen,
        users: users.clone(),
        gc: ctx.file.gc_options(),
        gc_interval: Some(Duration::from_secs(
            ctx.file.gc.interval_secs.unwrap_or(3600),
        )),
        file: ctx.file.clone(),
    };
    let data_dir = ctx.data_dir.clone();
    let json = ctx.json;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("strato-serve")
        .build()?;
    rt.block_on(server::serve(store, opts, move |addr| {
        let first = &users.list[0];
        let endpoint = format!("http://{addr}");
        if json {
            println!(
                "{}",
                serde_json::json!({"endpoint": endpoint, "data_dir": data_dir, "user": first.name,
                    "access_key": first.access_key, "secret_key": first.secret_key})
            );
        } else {
            println!("strato serving S3 at {endpoint}");
            println!("  data dir    {}", data_dir.display());
            println!("  user        {}{}", first.name, if users.generated { " (keys generated now and kept in the data dir)" } else { "" });
            println!("  access key  {}", first.access_key);
            println!("  secret key  {}", first.secret_key);
            println!();
            println!("s3cmd:  s3cmd --host={addr} --host-bucket={addr} --no-ssl --access_key={} --secret_key={} ls", first.access_key, first.secret_key);
            println!("aws:    AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY={} aws --endpoint-url {endpoint} s3 ls", first.access_key, first.secret_key);
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }))?;
    Ok(ExitCode::SUCCESS)
}
