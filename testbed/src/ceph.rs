//! A throwaway Ceph cluster: one mon, one OSD (memstore, or bluestore on a
//! sparse file) and radosgw on a loopback port, all child processes in the
//! foreground, configuration and data in a temp dir.
//!
//! The recipe and its settings were measured on the test machines: without
//! the short paxos intervals the OSD takes ~12 s to join; radosgw started
//! before the OSD is active stalls ~5 s; with `auth ... = none` radosgw
//! loops on authentication unless `ms mon client mode = crc`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::error::TestbedError;
use crate::guard::{self, Daemon, Guard};

/// How long each step may take before the start counts as failed (the
/// whole start is about 1.5 s with memstore).
const STEP_LIMIT: Duration = Duration::from_secs(30);

/// Options for [`Ceph::start_with`].
#[derive(Debug, Clone, Default)]
pub struct CephOptions {
    /// BlueStore on a sparse file in the temp dir (for benches: real disk
    /// writes) instead of memstore (RAM; keep tests' data small).
    pub bluestore: bool,
}

struct Tools {
    mon: PathBuf,
    osd: PathBuf,
    rgw: PathBuf,
    admin: PathBuf,
    ceph: PathBuf,
    monmaptool: PathBuf,
}

impl Tools {
    fn find() -> Result<Tools, TestbedError> {
        Ok(Tools {
            mon: guard::find_tool("ceph-mon", "ceph-mon")?,
            osd: guard::find_tool("ceph-osd", "ceph-osd")?,
            rgw: guard::find_tool("radosgw", "radosgw")?,
            admin: guard::find_tool("radosgw-admin", "radosgw")?,
            ceph: guard::find_tool("ceph", "ceph-common")?,
            monmaptool: guard::find_tool("monmaptool", "ceph-common")?,
        })
    }
}

#[derive(Default)]
struct Daemons {
    mon: Option<Daemon>,
    osd: Option<Daemon>,
    rgw: Option<Daemon>,
}

/// A Ceph cluster with an S3 user on radosgw.
///
/// Tests that [`stop_rgw`](Self::stop_rgw) should start their own instance
/// rather than use [`shared_ceph`], which other tests in the binary share.
pub struct Ceph {
    tools: Tools,
    rgw_port: u16,
    access_key: String,
    secret_key: String,
    daemons: Mutex<Daemons>,
    // Last: dropped after the daemons are stopped.
    guard: Guard,
}

impl Ceph {
    /// A memstore cluster.
    pub fn start() -> Result<Ceph, TestbedError> {
        Ceph::start_with(CephOptions::default())
    }

    pub fn start_with(opts: CephOptions) -> Result<Ceph, TestbedError> {
        // The ports were free when we looked; another process may bind one
        // before the daemon does. Then start over on fresh ports.
        let mut attempt = 1;
        loop {
            match Ceph::try_start(&opts) {
                Ok(ceph) => return Ok(ceph),
                Err(e) => {
                    let bind =
                        matches!(&e, TestbedError::Daemon { log, .. } if log.contains("bind"));
                    if !bind || attempt == 3 {
                        return Err(e);
                    }
                    tracing::warn!(attempt, "ceph testbed lost a port race, retrying: {e}");
                    attempt += 1;
                }
            }
        }
    }

    fn try_start(opts: &CephOptions) -> Result<Ceph, TestbedError> {
        let tools = Tools::find()?;
        let guard = Guard::new("strato-ceph-")?;
        let mon_port = guard::free_port()?;
        let mut rgw_port = guard::free_port()?;
        for _ in 0..10 {
            if rgw_port != mon_port {
                break;
            }
            rgw_port = guard::free_port()?;
        }
        let mut ceph = Ceph {
            tools,
            rgw_port,
            access_key: guard::random_token(20).to_uppercase(),
            secret_key: guard::random_token(40),
            daemons: Mutex::new(Daemons::default()),
            guard,
        };
        match ceph.bootstrap(mon_port, opts) {
            Ok(()) => Ok(ceph),
            Err(e) => {
                ceph.kill_all();
                Err(e)
            }
        }
    }

    fn bootstrap(&self, mon_port: u16, opts: &CephOptions) -> Result<(), TestbedError> {
        let t0 = Instant::now();
        let dir = self.guard.dir();
        for sub in ["mon", "osd", "run", "rgw"] {
            let p = dir.join(sub);
            std::fs::create_dir(&p)
                .map_err(TestbedError::io(format!("creating {}", p.display())))?;
        }
        let fsid = uuid()?;
        let conf = self.conf_path();
        std::fs::write(&conf, self.config(&fsid, mon_port, opts))
            .map_err(TestbedError::io(format!("writing {}", conf.display())))?;

        let monmap = dir.join("monmap");
        guard::run(
            "monmaptool --create",
            Command::new(&self.tools.monmaptool)
                .args(["--create", "--addv", "a"])
                .arg(format!("[v2:127.0.0.1:{mon_port}]"))
                .args(["--fsid", &fsid])
                .arg(&monmap),
        )?;
        guard::run(
            "ceph-mon --mkfs",
            self.ceph_cmd(&self.tools.mon)
                .args(["--mkfs", "-i", "a", "--monmap"])
                .arg(&monmap),
        )?;
        let mut cmd = self.ceph_cmd(&self.tools.mon);
        cmd.args(["-f", "-i", "a"]);
        // Nothing in a test cluster is worth a clean shutdown.
        let d = self.guard.spawn("ceph-mon", cmd, "KILL")?;
        self.daemons().mon = Some(d);

        // `ceph osd new` waits for the mon to answer.
        let osd_uuid = uuid()?;
        let id = guard::run(
            "ceph osd new",
            self.ceph_cmd(&self.tools.ceph).args([
                "--connect-timeout",
                "20",
                "osd",
                "new",
                &osd_uuid,
            ]),
        )?;
        let id = id.trim().to_string();
        if id.parse::<u32>().is_err() {
            return Err(TestbedError::Command {
                what: "ceph osd new".into(),
                output: format!("expected an OSD id, got {id:?}"),
            });
        }
        let t_mon = t0.elapsed();
        guard::run(
            "ceph-osd --mkfs",
            self.ceph_cmd(&self.tools.osd)
                .args(["--mkfs", "-i", &id, "--osd-uuid", &osd_uuid]),
        )?;
        let mut cmd = self.ceph_cmd(&self.tools.osd);
        cmd.args(["-f", "-i", &id]);
        let d = self.guard.spawn("ceph-osd", cmd, "KILL")?;
        self.daemons().osd = Some(d);
        // radosgw started before the OSD is active stalls for seconds.
        let osd_log = dir.join(format!("osd.{id}.log"));
        let active = guard::wait_until(STEP_LIMIT, Duration::from_millis(20), || {
            self.check_running()?;
            Ok(std::fs::read_to_string(&osd_log)
                .is_ok_and(|l| l.contains("state: booting -> active")))
        })?;
        if !active {
            return Err(TestbedError::daemon(
                format!("the OSD did not become active within {STEP_LIMIT:?}"),
                &osd_log,
            ));
        }
        let t_osd = t0.elapsed();

        self.spawn_rgw()?;
        // The user is made while radosgw starts: both create the rgw pools,
        // which Ceph allows.
        guard::run(
            "radosgw-admin user create",
            self.ceph_cmd(&self.tools.admin).args([
                "user",
                "create",
                "--uid=strato-test",
                "--display-name=strato test",
                &format!("--access-key={}", self.access_key),
                &format!("--secret-key={}", self.secret_key),
            ]),
        )?;
        self.wait_rgw()?;
        tracing::info!(?t_mon, ?t_osd, total = ?t0.elapsed(), "ceph testbed up");
        Ok(())
    }

    fn config(&self, fsid: &str, mon_port: u16, opts: &CephOptions) -> String {
        let d = self.guard.dir().display().to_string();
        let store = if opts.bluestore {
            // A sparse 20 GiB file, created by mkfs (outside osd data: mkfs
            // links osd/block to it). osd memory target at
            // its minimum: the machine runs several of these.
            format!(
                "osd objectstore = bluestore\n\
                 bluestore block path = {d}/bluestore.img\n\
                 bluestore block create = true\n\
                 bluestore block size = 21474836480\n\
                 bluestore block db create = false\n\
                 bluestore block wal create = false\n\
                 bluestore fsck on mkfs = false\n\
                 osd memory target = 939524096\n"
            )
        } else {
            // memstore keeps objects in RAM, bounded by this.
            "osd objectstore = memstore\nmemstore device bytes = 2147483648\n".to_string()
        };
        format!(
            "[global]\n\
             fsid = {fsid}\n\
             mon host = v2:127.0.0.1:{mon_port}\n\
             public addr = 127.0.0.1\n\
             public network = 127.0.0.0/8\n\
             auth cluster required = none\n\
             auth service required = none\n\
             auth client required = none\n\
             ms mon client mode = crc\n\
             osd pool default size = 1\n\
             osd pool default min size = 1\n\
             mon allow pool size one = true\n\
             mon warn on pool no redundancy = false\n\
             osd pool default pg num = 8\n\
             osd pool default pgp num = 8\n\
             osd pool default pg autoscale mode = off\n\
             mon max pg per osd = 1000\n\
             osd crush chooseleaf type = 0\n\
             paxos propose interval = 0.05\n\
             paxos min wait = 0.01\n\
             run dir = {d}/run\n\
             admin socket = {d}/run/$name.asok\n\
             log file = {d}/$name.log\n\
             mon data = {d}/mon\n\
             osd data = {d}/osd\n\
             {store}\
             [client.rgw]\n\
             rgw frontends = beast endpoint=127.0.0.1:{rgw_port}\n\
             rgw data = {d}/rgw\n",
            rgw_port = self.rgw_port
        )
    }

    /// `http://127.0.0.1:PORT`, radosgw's S3 endpoint (path-style).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.rgw_port)
    }

    pub fn port(&self) -> u16 {
        self.rgw_port
    }

    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// The cluster's ceph.conf (for `ceph -c`, `radosgw-admin -c`).
    pub fn conf_path(&self) -> PathBuf {
        self.guard.dir().join("ceph.conf")
    }

    /// radosgw's own log.
    pub fn rgw_log_path(&self) -> PathBuf {
        self.guard.dir().join("client.rgw.log")
    }

    /// An aws-sdk-s3 client for this radosgw: path-style, us-east-1, and
    /// checksums only when required (radosgw 16 answers 400
    /// XAmzContentSHA256Mismatch to the SDK's default trailing checksums).
    pub fn s3_client(&self) -> aws_sdk_s3::Client {
        s3_client(&self.endpoint(), &self.access_key, &self.secret_key)
    }

    /// Create bucket `name` (S3 rules: 3-63 characters). Panics on failure:
    /// see [`try_create_bucket`](Self::try_create_bucket). Works from sync
    /// and async code (it runs its own runtime on a thread of its own).
    pub fn create_bucket(&self, name: &str) {
        if let Err(e) = self.try_create_bucket(name) {
            panic!("creating bucket {name:?} on the Ceph testbed: {e}");
        }
    }

    pub fn try_create_bucket(&self, name: &str) -> Result<(), TestbedError> {
        let client = self.s3_client();
        let bucket = name.to_string();
        let result = std::thread::scope(|s| {
            s.spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(async {
                    client
                        .create_bucket()
                        .bucket(bucket)
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(|e| format!("{:?}", aws_sdk_s3::error::DisplayErrorContext(e)))
                })
            })
            .join()
            .unwrap_or_else(|_| Err("the bucket thread panicked".into()))
        });
        result.map_err(|output| TestbedError::Command {
            what: format!("CreateBucket {name:?}"),
            output,
        })
    }

    /// Stop radosgw (SIGTERM, then SIGKILL after 10 s). Mon and OSD keep
    /// running; requests fail until [`start_rgw`](Self::start_rgw).
    pub fn stop_rgw(&self) {
        let rgw = self.daemons().rgw.take();
        if let Some(d) = rgw {
            d.stop("TERM", Duration::from_secs(10));
        }
    }

    /// SIGKILL radosgw, e.g. in the middle of a PUT.
    pub fn kill_rgw(&self) {
        let rgw = self.daemons().rgw.take();
        if let Some(mut d) = rgw {
            d.kill9();
        }
    }

    /// Start radosgw again on the same port and wait until it answers.
    /// Panics on failure: see [`try_start_rgw`](Self::try_start_rgw).
    pub fn start_rgw(&self) {
        if let Err(e) = self.try_start_rgw() {
            panic!("restarting radosgw on the Ceph testbed: {e}");
        }
    }

    pub fn try_start_rgw(&self) -> Result<(), TestbedError> {
        if self.daemons().rgw.is_some() {
            return Ok(());
        }
        self.spawn_rgw()?;
        self.wait_rgw()
    }

    fn spawn_rgw(&self) -> Result<(), TestbedError> {
        let mut cmd = self.ceph_cmd(&self.tools.rgw);
        cmd.args(["-f", "-n", "client.rgw"]);
        let d = self.guard.spawn("radosgw", cmd, "KILL")?;
        self.daemons().rgw = Some(d);
        Ok(())
    }

    /// Until radosgw answers HTTP on its port.
    fn wait_rgw(&self) -> Result<(), TestbedError> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.rgw_port));
        let up = guard::wait_until(STEP_LIMIT, Duration::from_millis(20), || {
            self.check_running()?;
            Ok(http_answers(addr))
        })?;
        if up {
            Ok(())
        } else {
            Err(TestbedError::daemon(
                format!("radosgw did not answer on {addr} within {STEP_LIMIT:?}"),
                &self.rgw_log_path(),
            ))
        }
    }

    /// An error if a daemon that should run has exited.
    fn check_running(&self) -> Result<(), TestbedError> {
        let mut ds = self.daemons();
        let Daemons { mon, osd, rgw } = &mut *ds;
        for (name, d) in [("ceph-mon", mon), ("ceph-osd", osd), ("radosgw", rgw)] {
            if let Some(daemon) = d {
                if let Some(status) = daemon.exited() {
                    let log = daemon.log_path().to_path_buf();
                    let mut dead = d.take();
                    if let Some(dead) = dead.as_mut() {
                        dead.kill9();
                    }
                    let ceph_log = self.guard.dir().join(match name {
                        "ceph-mon" => "mon.a.log".to_string(),
                        "ceph-osd" => "osd.0.log".to_string(),
                        _ => "client.rgw.log".to_string(),
                    });
                    let mut e = TestbedError::daemon(format!("{name} exited ({status})"), &log);
                    if let TestbedError::Daemon { log, .. } = &mut e {
                        log.push_str("\n--- ");
                        log.push_str(&ceph_log.display().to_string());
                        log.push('\n');
                        log.push_str(&crate::error::log_tail(&ceph_log, 30));
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn ceph_cmd(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.arg("-c")
            .arg(self.conf_path())
            .current_dir(self.guard.dir())
            .env("CEPH_CONF", self.conf_path());
        cmd
    }

    fn daemons(&self) -> MutexGuard<'_, Daemons> {
        self.daemons
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn kill_all(&mut self) {
        let mut ds = self.daemons();
        for mut d in [ds.rgw.take(), ds.osd.take(), ds.mon.take()]
            .into_iter()
            .flatten()
        {
            d.kill9();
        }
    }
}

impl Drop for Ceph {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// The Ceph cluster shared by the tests of one test binary, started on
/// first use. Panics (naming the missing tool, if that is why) when it
/// cannot start: tests that need Ceph fail, never skip.
pub fn shared_ceph() -> &'static Ceph {
    static CEPH: OnceLock<Ceph> = OnceLock::new();
    CEPH.get_or_init(|| {
        let t0 = Instant::now();
        match Ceph::start() {
            Ok(c) => {
                eprintln!(
                    "strato-testbed: Ceph (radosgw {}) started in {:.2} s",
                    c.endpoint(),
                    t0.elapsed().as_secs_f64()
                );
                c
            }
            Err(e) => panic!("cannot start the Ceph testbed: {e}"),
        }
    })
}

/// An aws-sdk-s3 client configured for radosgw 16 (see [`Ceph::s3_client`]).
pub fn s3_client(endpoint: &str, access_key: &str, secret_key: &str) -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::{
        BehaviorVersion, Credentials, Region, RequestChecksumCalculation,
        ResponseChecksumValidation,
    };
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(
            access_key,
            secret_key,
            None,
            None,
            "strato-testbed",
        ))
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Whether something answers an HTTP request on `addr` (any status).
fn http_answers(addr: std::net::SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

fn uuid() -> Result<String, TestbedError> {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_string())
        .map_err(TestbedError::io(
            "reading a uuid from /proc/sys/kernel/random/uuid",
        ))
}
