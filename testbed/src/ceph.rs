//! A throwaway Ceph cluster (mon, OSD, radosgw). Not written yet.

/// Options for [`Ceph::start_with`].
#[derive(Debug, Clone, Default)]
pub struct CephOptions {
    pub bluestore: bool,
}

/// Placeholder until the Ceph testbed lands.
pub struct Ceph {}

pub fn shared_ceph() -> &'static Ceph {
    panic!("the Ceph testbed is not written yet")
}
