//! A node whose index file is damaged starts anyway, sets the file aside and serves again.

use crate::pair::{DEADLINE, Pair};
use crate::support::nix_available;
use nixmesh_tests::http::get_one as get;
use nixmesh_tests::{narinfo_url_path, wait_until};

#[test]
fn a_node_with_a_damaged_index_starts_and_serves_again() {
    if !nix_available() {
        return;
    }
    let pair = Pair::new();
    let path = pair.s1.add_file("held", b"a path held by node 1");
    pair.s1.sign_closure(&pair.key.secret_file, &path);
    let narinfo = narinfo_url_path(&path);
    let (n1, n2) = pair.start_both();
    wait_until(DEADLINE, "node 2 to serve node 1's path", || {
        get(n2.http_address(), &narinfo).0 == 200
    });
    pair.stop(n2);

    // Garbage where the index was: the node starts anyway, sets the file aside, and serves
    // once node 1's snapshot has arrived again.
    let state = pair.dir.path().join("n2");
    let index = state.join(nixmesh_node::node::INDEX_FILE);
    let len = std::fs::metadata(&index).unwrap().len() as usize;
    std::fs::write(&index, (0..len).map(|i| (i * 131 % 251) as u8).collect::<Vec<u8>>()).unwrap();
    let n2 = pair.start("n2", &pair.s2, pair.runtime.block_on(n1.p2p_addresses()));
    wait_until(DEADLINE, "node 2 to serve node 1's path again", || {
        get(n2.http_address(), &narinfo).0 == 200
    });
    let set_aside = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("index.redb.damaged-"))
        .count();
    assert_eq!(set_aside, 1, "the damaged file is kept beside the new index");
    pair.stop(n2);
    pair.stop(n1);
}
