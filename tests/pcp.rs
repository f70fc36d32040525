//! pgha's native PCP client against the real pgpool-II of a lab, compared
//! with pgpool's own `pcp_node_info`.

use std::time::Duration;

use pgha::pgpool::pcp::{PcpClient, PcpTarget};

use crate::util::lab::{Lab, LabOptions};

fn target(lab: &Lab) -> PcpTarget {
    PcpTarget {
        host: lab.addr("app"),
        port: 9898,
        user: "pgpool".into(),
        password: lab.env["PCP_PASSWORD"].clone(),
        timeout: Duration::from_secs(5),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn node_info_matches_pcp_node_info_and_attach_works() {
    let lab = Lab::up(LabOptions::default());
    let rt = rt();
    // pgpool's sr_check fills in the replication state within a second or
    // two: compare once both tools see the settled state.
    for id in 0..3u32 {
        lab.wait_observing(
            &format!("node {id}: our line = pcp_node_info's"),
            Duration::from_secs(20),
            || {
                let ours = rt.block_on(async {
                    let mut c = PcpClient::connect(&target(&lab)).await.unwrap();
                    let info = c.node_info(id).await.unwrap();
                    c.close().await;
                    info
                });
                let theirs = lab.pcp_node_info(id);
                if ours.to_pcp_node_info_line() == theirs && ours.is_up() {
                    Ok(())
                } else {
                    Err(format!(
                        "ours:   {}\ntheirs: {theirs}",
                        ours.to_pcp_node_info_line()
                    ))
                }
            },
        );
    }
    let count = rt.block_on(async {
        let mut c = PcpClient::connect(&target(&lab)).await.unwrap();
        c.node_count().await.unwrap()
    });
    assert_eq!(count, 3);

    // Detach with pgpool's own tool, attach with ours.
    let out = lab.exec(
        "app",
        &[
            "pcp_detach_node",
            "-w",
            "-h",
            &lab.addr("app"),
            "-p",
            "9898",
            "-U",
            "pgpool",
            "-n",
            "2",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.wait_observing("node 2 detached", Duration::from_secs(20), || {
        match lab.pcp_node(2) {
            Ok(n) if n.status == "down" => Ok(()),
            other => Err(other),
        }
    });
    // Attached as pgha does it: a fresh connection per try, retried while
    // pgpool is busy with the detach's failover.
    let policy = pgha::pgpool::ops::Retry {
        until: std::time::Instant::now() + Duration::from_secs(20),
        connect_for: Duration::from_secs(2),
    };
    rt.block_on(pgha::pgpool::ops::retry(
        &target(&lab),
        policy,
        "attach node 2",
        |t| async move {
            let mut c = PcpClient::connect(&t).await?;
            let r = c.attach_node(2).await;
            c.close().await;
            r
        },
    ))
    .unwrap();
    lab.wait_observing(
        "node 2 attached again",
        Duration::from_secs(20),
        || match lab.pcp_node(2) {
            Ok(n) if n.status == "up" || n.status == "waiting" => Ok(()),
            other => Err(other),
        },
    );

    // A wrong password is refused with a message naming the user.
    let mut bad = target(&lab);
    bad.password = "wrong".into();
    let err = rt.block_on(PcpClient::connect(&bad)).expect_err("refused");
    assert!(err.to_string().contains("pgpool"), "{err}");
    // A node id pgpool does not have.
    let err = rt
        .block_on(async {
            let mut c = PcpClient::connect(&target(&lab)).await.unwrap();
            c.attach_node(7).await
        })
        .unwrap_err();
    assert!(err.to_string().contains('7'), "{err}");
}
