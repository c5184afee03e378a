//! `nixmesh why`: what would be served and, when not, why not.

use crate::pair::{DEADLINE, Pair};
use crate::support::{nix_available, stdout_of};
use nixmesh_tests::{test_closure_expr, unique_marker, wait_until};

#[test]
fn why_says_what_would_be_served_and_why_not() {
    if !nix_available() {
        return;
    }
    let pair = Pair::new();
    let signed = pair.s1.build_closure(&test_closure_expr(&unique_marker()));
    pair.s1.sign_closure(&pair.key.secret_file, &signed.top);
    let unsigned = pair.s1.build_closure(&test_closure_expr(&unique_marker()));
    let added = pair.s1.add_file("added", unique_marker().as_bytes());
    let (n1, n2) = pair.start_both();
    let url = format!("http://{}", n2.http_address());
    let why = |path: &str| -> serde_json::Value {
        serde_json::from_str(&stdout_of(&["why", path, "--json", "--node", &url])).unwrap()
    };
    wait_until(DEADLINE, "node 2 to index node 1's paths", || why(&signed.top)["served"] == true);
    let name = nixmesh_node::mesh::peer_name::local().expect("this machine has a hostname");

    // A signed path: served, and why.
    let report = why(&signed.top);
    assert_eq!(report["verdict"], "served");
    assert_eq!(report["advertisers"], 1);
    let holder = &report["holders"][0];
    assert_eq!(holder["peer"]["id"], n1.peer_id().to_string().as_str());
    assert_eq!(holder["narinfo"]["store_path"], signed.top.as_str());
    assert_eq!(holder["narinfo"]["signatures"], serde_json::json!(["loopback-1"]));
    assert_eq!(holder["accepted_by"], "signed by loopback-1");
    let text = stdout_of(&["why", &signed.top, "--node", &url]);
    let head = format!(
        "{}\nserved:   yes\nwhy:      this node would serve it to Nix (signed by loopback-1)\ntrusting: loopback-1\nholders:  1 advertise it\n  {name} (",
        signed.top
    );
    assert!(text.starts_with(&head), "{text}");
    assert!(
        text.contains("    signed by: loopback-1\n    accepted (signed by loopback-1)\n"),
        "{text}"
    );

    // Unsigned and input-addressed: held, but its holder does not serve it to peers (no key
    // vouches for it, and the holder has no signing key).
    let report = why(&unsigned.top);
    assert_eq!(
        (report["served"].clone(), report["verdict"].clone()),
        (false.into(), "holder_declines".into())
    );
    assert_eq!(report["holders"][0]["narinfo"], serde_json::Value::Null);
    let text = stdout_of(&["why", &unsigned.top, "--node", &url]);
    assert!(text.contains("served:   no\n") && text.contains("do not serve it"), "{text}");
    assert!(text.contains("    not used: it does not serve it to peers"), "{text}");

    // Content-addressed: served with no signature, by the hash alone.
    let base = added.strip_prefix("/nix/store/").unwrap();
    let report = why(&base[..32]);
    assert_eq!(report["verdict"], "served");
    assert_eq!(report["holders"][0]["accepted_by"], "content-addressed");
    assert!(report["holders"][0]["narinfo"]["ca"].as_str().unwrap().starts_with("fixed:"));

    // Nobody has it.
    let nobody = "/nix/store/00000000000000000000000000000000-nothing";
    let report = why(nobody);
    assert_eq!(
        (report["verdict"].clone(), report["advertisers"].clone()),
        ("no_holder".into(), 0.into())
    );
    let text = stdout_of(&["why", nobody, "--node", &url]);
    assert!(
        text.starts_with(&format!(
            "{nobody}\nserved:   no\nwhy:      not served: no peer advertises it"
        )),
        "{text}"
    );

    // Its holder gone (the index keeps what it advertised until it is forgotten).
    pair.stop(n1);
    wait_until(DEADLINE, "node 2 to see node 1 gone", || {
        why(&signed.top)["verdict"] == "holder_unreachable"
    });
    let text = stdout_of(&["why", &signed.top, "--node", &url]);
    assert!(
        text.contains("served:   no\n") && text.contains("offline)\n    not used: not connected\n"),
        "{text}"
    );
    pair.stop(n2);
}
