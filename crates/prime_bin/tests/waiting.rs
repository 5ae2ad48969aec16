//! A part that has nobody to work with says so: a worker process started before its proxy (or
//! whose proxy could not bind) logs that it waits for it, not that it is connected, and says
//! `connected to the proxy` only once it hears it; a proxy that has had no worker for a while
//! warns, and counts the jobs that came meanwhile.

mod common;
use common::*;
use std::process::Stdio;

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn a_worker_says_it_waits_for_its_proxy_until_it_hears_it() {
    let dir = temp_dir("no-proxy-yet");
    let ep = |name: &str| format!("ipc://{}/{name}", dir.display());
    let log = dir.join("worker.log");
    let worker = Proc::start_logging(
        "prime_workerd",
        &[
            &ep("out"),
            "-",
            &ep("lb"),
            &ep("int"),
            "--work",
            "echo",
            "--heartbeat-ms",
            "100",
        ],
        Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    wait_until("the worker says it waits for its proxy", || {
        read(&log).contains("waiting for their proxy")
    });
    // No proxy for a heartbeat expiry: a warning, and still no claim to be connected.
    wait_until("the worker warns it has no proxy yet", || {
        read(&log).contains("no proxy yet")
    });
    let text = read(&log);
    assert!(
        !text.contains("connected to the proxy") && !text.contains("workers connected"),
        "{text}"
    );
    let proxy = Proc::start(
        "prime_proxyd",
        &[&ep("in"), &ep("out"), "--heartbeat-ms", "100"],
    );
    wait_until("the worker says it is connected to the proxy", || {
        read(&log).contains("connected to the proxy")
    });
    worker.stop();
    proxy.stop();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_proxy_without_workers_warns_and_counts_the_jobs_that_wait() {
    let dir = temp_dir("no-workers");
    let ep = |name: &str| format!("ipc://{}/{name}", dir.display());
    let log = dir.join("proxy.log");
    let metrics = format!("127.0.0.1:{}", free_port());
    let proxy = Proc::start_logging(
        "prime_proxyd",
        &[
            &ep("in"),
            &ep("out"),
            // DRAIN_SECONDS: the job that waited stays queued past its deadline, and a drain
            // waits for the queue.
            "0",
            "--heartbeat-ms",
            "100",
            "--metrics-listen",
            &metrics,
        ],
        Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    wait_until("the proxy warns it has no workers", || {
        read(&log).contains("no workers")
    });
    // LISTEN PROXY LOOPBACK INTERRUPT ENABLE_LOGGING MAX_REQUEST_SIZE TIMEOUT_SECONDS
    // DRAIN_SECONDS
    let mut front = Proc::start(
        "prime_httpd",
        &[
            "127.0.0.1:0",
            &ep("in"),
            &ep("lb"),
            &ep("int"),
            "false",
            "1000",
            "1",
            "0",
        ],
    );
    let addr = front.listening();
    let (status, _, _) = http(&mut connect(addr), &get("/nobody")).expect("no answer");
    assert!(status == 503 || status == 504, "{status}");
    let counted = || {
        common::exposition::value(
            &metrics,
            "prime_server_proxy_received_without_workers_total",
            &[("stage", "stage")],
        )
    };
    wait_until("the job counted", || counted() >= 1.0);
    front.stop();
    proxy.stop();
    let _ = std::fs::remove_dir_all(dir);
}
