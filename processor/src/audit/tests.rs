//! The audit's comparison and report, with hand-made data (no services).
use super::*;
use schemas::RejectionReason;

fn at(topic: &str, offset: i64) -> Location {
    Location {
        topic: topic.into(),
        partition: 0,
        offset,
    }
}

fn short(sku: &str, requested: i32, available: i64) -> Decision {
    Decision::Rejected {
        reason: RejectionReason::InsufficientStock,
        lines: vec![RejectedLine {
            sku: sku.into(),
            requested,
            available: Some(available),
        }],
    }
}

fn serial() -> SerialResult {
    SerialResult {
        decisions: BTreeMap::from([
            ("o1".into(), vec![Decision::Confirmed]),
            ("o2".into(), vec![short("A", 5, 1)]),
            ("o3".into(), vec![Decision::Confirmed]),
            ("o4".into(), vec![short("B", 2, 0)]),
            ("o5".into(), vec![Decision::Confirmed]),
        ]),
        stock: BTreeMap::from([("A".into(), 1), ("B".into(), 0), ("C".into(), 7)]),
        duplicates: 0,
    }
}

#[test]
fn the_same_decisions_and_stock_are_no_difference() {
    let serial = serial();
    let observed = Observed {
        outcomes: serial
            .decisions
            .iter()
            .enumerate()
            .map(|(i, (id, d))| (id.clone(), vec![(d[0].clone(), at("out", i as i64))]))
            .collect(),
        stock: serial.stock.clone(),
        unreadable: Vec::new(),
    };
    assert_eq!(compare(&serial, &observed), vec![]);
}

#[test]
fn every_kind_of_difference_is_found_and_named() {
    let serial = serial();
    let observed = Observed {
        outcomes: BTreeMap::from([
            // o1 agrees; o2 has no outcome.
            ("o1".into(), vec![(Decision::Confirmed, at("confirmed", 0))]),
            // o3: the clerk confirmed it, the topics rejected it.
            ("o3".into(), vec![(short("A", 1, 0), at("rejected", 0))]),
            // o4: the right rejection, but another figure for what was left.
            ("o4".into(), vec![(short("B", 2, 1), at("rejected", 1))]),
            // o5: two outcomes, even if both agree.
            (
                "o5".into(),
                vec![
                    (Decision::Confirmed, at("confirmed", 1)),
                    (Decision::Confirmed, at("confirmed", 2)),
                ],
            ),
            (
                "ghost".into(),
                vec![(Decision::Confirmed, at("confirmed", 3))],
            ),
        ]),
        // A agrees, B differs, C is missing, D is extra.
        stock: BTreeMap::from([("A".into(), 1), ("B".into(), 3), ("D".into(), 2)]),
        unreadable: vec![(at("confirmed", 4), "undecodable record: junk".into())],
    };
    let differences = compare(&serial, &observed);
    let kinds: Vec<&str> = differences.iter().map(Difference::kind).collect();
    assert_eq!(
        kinds,
        vec![
            "missing outcome",
            "different decision",
            "different decision",
            "more than one outcome",
            "outcome for an unknown order",
            "different final stock",
            "different final stock",
            "different final stock",
            "unreadable output record",
        ]
    );
    let lines: Vec<String> = differences.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines[0],
        "order o2: clerk REJECTED InsufficientStock [A wanted 5, 1 left]; topics: no outcome"
    );
    assert_eq!(
        lines[1],
        "order o3: clerk CONFIRMED; topics: REJECTED InsufficientStock [A wanted 1, 0 left] \
         at rejected[0]@0"
    );
    assert_eq!(
        lines[3],
        "order o5: clerk CONFIRMED; topics: 2 outcomes: CONFIRMED at confirmed[0]@1; \
         CONFIRMED at confirmed[0]@2"
    );
    assert_eq!(
        lines[4],
        "order ghost: not in the inputs; topics: CONFIRMED at confirmed[0]@3"
    );
    assert_eq!(lines[5], "sku B: clerk 0 available; inventory-updated: 3");
    assert_eq!(
        lines[6],
        "sku C: clerk 7 available; inventory-updated: no stock"
    );
    assert_eq!(lines[8], "record confirmed[0]@4: undecodable record: junk");
}

#[test]
fn the_report_counts_by_kind_and_shows_the_first_n() {
    let report = Report {
        records: vec![("orders".into(), 3), ("orders-confirmed".into(), 0)],
        missing: vec!["orders-confirmed".into()],
        poison: 1,
        orders: 2,
        duplicates: 0,
        rerouted: 0,
        differences: vec![
            Difference::Missing {
                order_id: "o1".into(),
                clerk: Decision::Confirmed,
            },
            Difference::Missing {
                order_id: "o2".into(),
                clerk: Decision::Confirmed,
            },
        ],
    };
    let text = report.render(1);
    assert!(
        text.contains("records read: orders 3, orders-confirmed 0 (no such topic)\n"),
        "{text}"
    );
    assert!(
        text.contains("differences: 2\n  missing outcome: 2\n"),
        "{text}"
    );
    assert!(
        text.contains("first 1:\n  order o1: clerk CONFIRMED"),
        "{text}"
    );
    assert!(!text.contains("order o2"), "{text}");
}

#[test]
fn an_id_decided_again_after_its_retention_needs_one_outcome_per_decision() {
    let serial = SerialResult {
        decisions: BTreeMap::from([("o1".into(), vec![Decision::Confirmed, short("A", 5, 1)])]),
        ..SerialResult::default()
    };
    let observed = |found: Vec<(Decision, Location)>| Observed {
        outcomes: BTreeMap::from([("o1".into(), found)]),
        ..Observed::default()
    };
    // Both decisions, in either topic's order: no difference.
    let both = observed(vec![
        (Decision::Confirmed, at("confirmed", 9)),
        (short("A", 5, 1), at("rejected", 0)),
    ]);
    assert_eq!(compare(&serial, &both), vec![]);
    // Only the first: the second is missing.
    let first = observed(vec![(Decision::Confirmed, at("confirmed", 9))]);
    assert_eq!(
        compare(&serial, &first),
        vec![Difference::Missing {
            order_id: "o1".into(),
            clerk: short("A", 5, 1),
        }]
    );
    // Two outcomes, one not the clerk's: that one differs.
    let other = observed(vec![
        (Decision::Confirmed, at("confirmed", 9)),
        (Decision::Confirmed, at("confirmed", 10)),
    ]);
    assert_eq!(
        compare(&serial, &other),
        vec![Difference::Differs {
            order_id: "o1".into(),
            clerk: short("A", 5, 1),
            found: (Decision::Confirmed, at("confirmed", 10)),
        }]
    );
    // Three: more than the clerk's two.
    let mut three = other.clone();
    three
        .outcomes
        .get_mut("o1")
        .expect("o1")
        .push((short("A", 5, 1), at("rejected", 0)));
    assert_eq!(
        compare(&serial, &three)
            .iter()
            .map(Difference::kind)
            .collect::<Vec<_>>(),
        vec!["more than one outcome"]
    );
}
