//! Socket options are the application's (issue 14, item 10): clusterd sets none on a connection
//! it hands over, unless asked (`--tcp-nodelay`).

mod support;

use nix::sys::signal::Signal;
use support::*;

fn nodelay_seen_by_the_worker(args: &[&str]) -> String {
    let mut all = vec!["--workers", "1", "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let mut c = Cluster::start(&all, &["--serve"]);
    let status = c.wait_ready(1);
    let response = get(listen_addr(&status), "/nodelay");
    assert_eq!(response.code, 200, "{}", response.body);
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit().code(), Some(0), "{}", c.stderr_dump());
    response.body
}

#[test]
fn a_handed_off_socket_has_the_kernels_default_nagle_setting() {
    let body = nodelay_seen_by_the_worker(&[]);
    assert!(body.contains("nodelay=false"), "clusterd changed TCP_NODELAY unasked: {body}");
}

#[test]
fn tcp_nodelay_sets_it_when_asked() {
    let body = nodelay_seen_by_the_worker(&["--tcp-nodelay"]);
    assert!(body.contains("nodelay=true"), "{body}");
}
