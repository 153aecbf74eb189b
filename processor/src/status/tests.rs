//! The pure part of `processor status`: client ids, assignments, the report and its screen.

use std::collections::BTreeMap;

use super::report::{
    DeadLetters, GroupView, MemberView, Observed, PartitionOffsets, Screen, build, parse_assignment,
};
use super::*;
use crate::runtime::live::TaskStatus;

/// A classic consumer protocol assignment, as the broker hands it out.
fn assignment(topics: &[(&str, &[i32])]) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&1i16.to_be_bytes());
    bytes.extend_from_slice(&(topics.len() as i32).to_be_bytes());
    for (topic, partitions) in topics {
        bytes.extend_from_slice(&(topic.len() as i16).to_be_bytes());
        bytes.extend_from_slice(topic.as_bytes());
        bytes.extend_from_slice(&(partitions.len() as i32).to_be_bytes());
        for p in *partitions {
            bytes.extend_from_slice(&p.to_be_bytes());
        }
    }
    bytes.extend_from_slice(&(-1i32).to_be_bytes()); // no user data
    bytes
}

#[test]
fn assignments_parse_and_garbage_does_not() {
    let bytes = assignment(&[("orders", &[0, 1]), ("inventory-adjustments", &[0, 1])]);
    assert_eq!(
        parse_assignment(&bytes),
        Some(vec![
            ("orders".to_owned(), 0),
            ("orders".to_owned(), 1),
            ("inventory-adjustments".to_owned(), 0),
            ("inventory-adjustments".to_owned(), 1),
        ])
    );
    assert_eq!(parse_assignment(&bytes[..9]), None, "cut short");
    assert_eq!(parse_assignment(&[]), None);
    assert_eq!(parse_assignment(&assignment(&[])), Some(vec![]));
}

#[test]
fn client_ids_name_instance_thread_and_status_address() {
    let addr: SocketAddr = "127.0.0.1:9401".parse().expect("an address");
    let id = client_id("18a3f-1", 1, addr);
    assert_eq!(id, "stockflow-18a3f-1-engine-1@127.0.0.1:9401");
    let name = MemberName::parse(&id).expect("parses");
    assert_eq!(name.instance, "18a3f-1");
    assert_eq!(name.thread, "engine-1");
    assert_eq!(name.status_addr("/10.0.0.5"), "127.0.0.1:9401");
    // Bound to every interface: ask the host the group saw.
    let any = MemberName::parse("stockflow-ab-engine-0@0.0.0.0:9400").expect("parses");
    assert_eq!(any.status_addr("/10.0.0.5"), "10.0.0.5:9400");
    assert_eq!(MemberName::parse("rdkafka"), None);
    assert_eq!(MemberName::parse("stockflow-ab-engine-x@127.0.0.1:1"), None);
    assert_eq!(MemberName::parse("stockflow-ab-engine-0@nowhere"), None);
}

fn thread(client_id: &str, tasks: &[(&str, &str, u64, u64)], commit: i64) -> ThreadStatus {
    ThreadStatus {
        thread: "engine-0".to_owned(),
        client_id: client_id.to_owned(),
        tasks: tasks
            .iter()
            .map(|&(task, state, restored, to_restore)| TaskStatus {
                task: task.to_owned(),
                state: state.to_owned(),
                restored,
                to_restore,
            })
            .collect(),
        last_commit_ms: Some(commit),
        commits: 3,
    }
}

/// Two instances: `a` answers (one task restoring), `b` does not.
fn observed_two_instances() -> Observed {
    let a = "stockflow-a-engine-0@127.0.0.1:9400";
    let b = "stockflow-b-engine-0@127.0.0.1:9401";
    let member = |client_id: &str, partition: i32| MemberView {
        client_id: client_id.to_owned(),
        host: "/127.0.0.1".to_owned(),
        partitions: [
            "orders",
            "inventory-adjustments",
            "app-line-results-repartition",
        ]
        .iter()
        .map(|t| (t.to_string(), partition))
        .collect(),
    };
    let offsets = |topic: &str, partition, committed, end| PartitionOffsets {
        topic: topic.to_owned(),
        partition,
        committed,
        start: 0,
        end,
    };
    let mut answers = BTreeMap::new();
    answers.insert(
        "127.0.0.1:9400".to_owned(),
        Ok(InstanceStatus {
            application_id: "app".to_owned(),
            instance_id: "a".to_owned(),
            ready: false,
            threads: vec![thread(
                a,
                &[("0_0", "running", 0, 0), ("1_0", "restoring", 40, 100)],
                9_000,
            )],
            sync: SyncStatus {
                lag_rows: 12,
                lag_seconds: 0.5,
            },
        }),
    );
    answers.insert(
        "127.0.0.1:9401".to_owned(),
        Err("connection refused".to_owned()),
    );
    Observed {
        application_id: "app".to_owned(),
        group: Some(GroupView {
            state: "Stable".to_owned(),
            protocol: "range".to_owned(),
            members: vec![member(b, 1), member(a, 0)],
        }),
        inputs: vec![
            offsets("orders", 0, Some(10), 10),
            offsets("orders", 1, Some(4), 10),
            offsets("inventory-adjustments", 0, None, 3),
            offsets("inventory-adjustments", 1, Some(3), 3),
        ],
        missing_inputs: vec![],
        dead_letters: Some(DeadLetters {
            topic: "orders-dlq".to_owned(),
            records: 1,
            by_kind: [("undecodable".to_owned(), 1)].into_iter().collect(),
        }),
        answers,
        now_ms: 10_000,
    }
}

#[test]
fn the_report_puts_members_tasks_restores_and_lag_together() {
    let topology = crate::topology::describe("app", &schemas::Topics::with_prefix(""));
    let report = build(&observed_two_instances(), &topology);
    assert_eq!(report.group_state, "Stable");
    let clients: Vec<&str> = report
        .members
        .iter()
        .map(|m| m.client_id.as_str())
        .collect();
    assert_eq!(
        clients,
        [
            "stockflow-a-engine-0@127.0.0.1:9400",
            "stockflow-b-engine-0@127.0.0.1:9401"
        ],
        "sorted by client id"
    );
    let (a, b) = (&report.members[0], &report.members[1]);
    assert_eq!(a.tasks, ["0_0", "1_0"]);
    assert_eq!(b.tasks, ["0_1", "1_1"]);
    assert!(a.answered && a.last_commit_ms == Some(9_000));
    assert!(!b.answered);
    assert_eq!(b.error.as_deref(), Some("connection refused"));
    assert_eq!(report.instances.len(), 2);
    assert_eq!(report.instances[0].sync_lag_rows, Some(12));
    assert_eq!(report.restoring.len(), 1);
    assert_eq!(
        (
            report.restoring[0].task.as_str(),
            report.restoring[0].restored
        ),
        ("1_0", 40)
    );
    let lags: Vec<(i64, Option<&str>)> = report
        .lag
        .iter()
        .map(|l| (l.lag, l.owner.as_deref()))
        .collect();
    assert_eq!(
        lags,
        [
            (0, Some("stockflow-a-engine-0@127.0.0.1:9400")),
            (6, Some("stockflow-b-engine-0@127.0.0.1:9401")),
            (3, Some("stockflow-a-engine-0@127.0.0.1:9400")),
            (0, Some("stockflow-b-engine-0@127.0.0.1:9401")),
        ],
        "nothing committed counts from the start"
    );
    assert_eq!(report.total_lag, 9);
    // The JSON shape reads back as it was written.
    let json = serde_json::to_string(&report).expect("serializes");
    let back: report::Report = serde_json::from_str(&json).expect("deserializes");
    assert_eq!(back, report);

    let screen = Screen {
        report: &report,
        now_ms: 10_000,
    }
    .to_string();
    for heading in [
        "MEMBERS",
        "INSTANCES",
        "RESTORING",
        "INPUT LAG",
        "DEAD LETTERS",
    ] {
        assert!(
            screen.contains(&format!("\n{heading}\n")),
            "{heading} in:\n{screen}"
        );
    }
    assert!(screen.contains("1.0 s ago"), "{screen}");
    assert!(screen.contains("no answer: connection refused"), "{screen}");
    assert!(
        screen.contains("1_0 on stockflow-a-engine-0@127.0.0.1:9400: 40 of 100"),
        "{screen}"
    );
    assert!(
        screen.contains("orders-dlq: 1 record(s) (undecodable 1)"),
        "{screen}"
    );
    assert!(screen.contains("total lag: 9"), "{screen}");
}

#[test]
fn with_no_members_the_report_is_the_metadata_only() {
    let topology = crate::topology::describe("app", &schemas::Topics::with_prefix(""));
    let mut observed = observed_two_instances();
    observed.group = Some(GroupView {
        state: "Empty".to_owned(),
        protocol: String::new(),
        members: vec![],
    });
    observed.answers.clear();
    let report = build(&observed, &topology);
    assert!(report.members.is_empty() && report.instances.is_empty());
    assert!(report.lag.iter().all(|l| l.owner.is_none()));
    assert_eq!(report.total_lag, 9);
    let screen = Screen {
        report: &report,
        now_ms: 0,
    }
    .to_string();
    assert!(screen.contains("no instance is running"), "{screen}");
    assert!(screen.contains("\nMEMBERS\n(none)\n"), "{screen}");
    assert!(screen.contains("\nINSTANCES\n(none)\n"), "{screen}");
}
