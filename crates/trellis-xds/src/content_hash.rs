//! Content hashes of single resources, for a control plane that pushes only what changed.
//!
//! The protobuf encoding of a resource is not stable (prost encodes `map` fields such as
//! `filter_metadata` in `HashMap` order), so a resource is hashed over its [`crate::to_json`]
//! rendering instead, streamed into FNV-1a 64 like [`crate::content_version`]. Equal content
//! gives equal hashes across compilations and processes.

use crate::{Cluster, ClusterLoadAssignment, Fnv1a, Listener, RouteConfiguration, json};

/// FNV-1a 64 of the JSON rendering of one listener.
pub fn listener_hash(listener: &Listener) -> u64 {
    hash_with(|h| serde_json::to_writer(h, &json::listener(listener)))
}

/// FNV-1a 64 of the JSON rendering of one route configuration.
pub fn route_hash(route: &RouteConfiguration) -> u64 {
    hash_with(|h| json::write_route_configuration(route, h))
}

/// FNV-1a 64 of the JSON rendering of one cluster.
pub fn cluster_hash(cluster: &Cluster) -> u64 {
    hash_with(|h| serde_json::to_writer(h, &json::cluster(cluster)))
}

/// FNV-1a 64 of the JSON rendering of one load assignment.
pub fn load_assignment_hash(assignment: &ClusterLoadAssignment) -> u64 {
    hash_with(|h| serde_json::to_writer(h, &json::load_assignment(assignment)))
}

fn hash_with(write: impl FnOnce(&mut Fnv1a) -> serde_json::Result<()>) -> u64 {
    let mut hasher = Fnv1a::default();
    // Writing into a hasher cannot fail, and a `Value` always serializes.
    let _ = write(&mut hasher);
    hasher.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_content_hashes_equal_and_a_change_changes_it() {
        let mut a = ClusterLoadAssignment {
            cluster_name: "outbound|9080||reviews.default.svc.cluster.local".into(),
            ..Default::default()
        };
        let b = a.clone();
        assert_eq!(load_assignment_hash(&a), load_assignment_hash(&b));
        a.cluster_name.push('x');
        assert_ne!(load_assignment_hash(&a), load_assignment_hash(&b));
    }
}
