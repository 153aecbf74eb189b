//! A shop that keeps trading, as `scripts/run.sh` runs it but sped up: the processor binary,
//! a catalog whose initial stock lasts about a second, and `generator run --restock-every`
//! for 40 s. Orders go on being confirmed to the end of the run, at a steady share, with
//! rejections among them (popular SKUs sell out shortly before each restock).

mod support;

use std::collections::HashMap;

use support::{MINUTE, World};

/// The number at the end of a generated order id (`order-<seed>-<n>`): its place in the run.
fn order_index(order_id: &str) -> usize {
    order_id
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a generated order id: {order_id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restocks_keep_orders_confirmed_to_the_end_of_the_run() {
    let world = World::new("restock").await;
    let (synthetic, stock) = (20, 50);
    world.seed(synthetic, stock).await;
    let initial_units = 3 + i64::from(synthetic) * stock;
    let state = tempfile::tempdir().expect("state dir");
    let mut processor = world.spawn_processor("p1", state.path(), &[]);
    processor.wait_ready(MINUTE).await;

    let summary = world
        .spawn_generator(&[
            "--rate",
            "300",
            "--duration",
            "40s",
            "--synthetic-skus",
            &synthetic.to_string(),
            "--lines-max",
            "3",
            "--restock-every",
            "1s",
        ])
        .await
        .expect("the generator ran");
    eprintln!("{summary}");
    assert_eq!(summary.valid, summary.sent, "no invalid or repeated orders");
    let outcomes = world.outcomes(summary.sent as usize, 3 * MINUTE).await;

    // Outcomes per quarter of the run (orders are numbered in the order they were sent, at a
    // steady rate).
    let quarter = |order_id: &str| (order_index(order_id) * 4 / summary.sent as usize).min(3);
    let mut confirmed = [0usize; 4];
    let mut rejected = [0usize; 4];
    let mut confirmed_units = 0i64;
    for c in &outcomes.confirmed {
        confirmed[quarter(&c.order_id)] += 1;
        confirmed_units += c.lines.iter().map(|l| i64::from(l.quantity)).sum::<i64>();
    }
    let mut reasons: HashMap<String, usize> = HashMap::new();
    for r in &outcomes.rejected {
        rejected[quarter(&r.order_id)] += 1;
        *reasons.entry(format!("{:?}", r.reason)).or_default() += 1;
    }
    for q in 0..4 {
        eprintln!(
            "quarter {}: {} confirmed, {} rejected",
            q + 1,
            confirmed[q],
            rejected[q]
        );
    }
    eprintln!(
        "{confirmed_units} units confirmed, {initial_units} in the initial stock, {} restocked; rejections {reasons:?}",
        summary.restocked_units
    );
    assert!(
        confirmed_units > 10 * initial_units,
        "the restocks, not the initial stock, are what is sold"
    );
    let share = |q: usize| confirmed[q] as f64 / (confirmed[q] + rejected[q]).max(1) as f64;
    assert!(
        share(3) >= 0.5,
        "the last quarter still confirms most orders: {:.2}",
        share(3)
    );
    assert!(
        (share(3) - share(1)).abs() < 0.2,
        "a steady share: second quarter {:.2}, last {:.2}",
        share(1),
        share(3)
    );
    assert!(
        rejected[1..].iter().sum::<usize>() > 0,
        "a mix: some orders are rejected in the steady state"
    );

    processor.signal("TERM");
    let status = processor.wait_exit(MINUTE).await;
    assert!(status.is_some_and(|s| s.success()), "exits 0: {status:?}");
}
