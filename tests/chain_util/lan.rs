//! A LAN of network namespaces for multi-node tests: one namespace per
//! host, each with `eth0` = 10.77.0.(i+1)/24 on a veth whose peer sits on a
//! bridge in a namespace of its own, so nothing ever appears in the root
//! namespace. Names start with a per-process prefix (tests run in
//! parallel); every namespace, and with it every veth and the bridge, is
//! deleted on drop, on success or failure.

use std::process::Command;
use std::time::Duration;

use super::run_bounded;
use crate::common::require_tool;

pub struct Lan {
    prefix: String,
    namespaces: Vec<String>,
}

/// Runs `ip ARGS`, failing the test if it fails or outlives 20 s.
pub fn ip(args: &[&str]) {
    let mut cmd = Command::new(require_tool("ip"));
    cmd.args(args);
    let out = run_bounded(cmd, Duration::from_secs(20));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lan {
    /// `hosts` namespaces named `<kind><PID><tag>h<i>`, bridged. With
    /// `multicast`, the bridge floods multicast (no snooping: without an
    /// IGMP querier a snooping bridge may stop forwarding a group, and
    /// flooding is what a small segment does anyway) and every host routes
    /// 224.0.0.0/4 out of eth0.
    pub fn new(kind: &str, tag: &str, hosts: usize, multicast: bool) -> Lan {
        let mut lan = Lan {
            prefix: format!("{kind}{}{tag}", std::process::id()),
            namespaces: Vec::new(),
        };
        let br = lan.bridge();
        ip(&["netns", "add", &br]);
        lan.namespaces.push(br.clone());
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]);
        if multicast {
            ip(&[
                "-n",
                &br,
                "link",
                "set",
                "br0",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ]);
        }
        ip(&["-n", &br, "link", "set", "br0", "up"]);
        for i in 0..hosts {
            let ns = lan.host(i);
            ip(&["netns", "add", &ns]);
            lan.namespaces.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            // Created inside the host namespace, peer straight into the
            // bridge namespace.
            let peer = format!("p{i}");
            ip(&[
                "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &peer, "netns",
                &br,
            ]);
            ip(&["-n", &br, "link", "set", &peer, "master", "br0"]);
            ip(&["-n", &br, "link", "set", &peer, "up"]);
            let addr = format!("{}/24", lan.addr(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            if multicast {
                ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"]);
            }
        }
        lan
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespace holding the bridge (its ports are `p<i>`).
    pub fn bridge(&self) -> String {
        format!("{}br", self.prefix)
    }

    pub fn host(&self, i: usize) -> String {
        format!("{}h{i}", self.prefix)
    }

    pub fn addr(&self, i: usize) -> String {
        format!("10.77.0.{}", i + 1)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
