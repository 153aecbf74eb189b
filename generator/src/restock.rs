//! Restocks during a run, so that a shop keeps trading: after each period, every SKU gets
//! `factor` times the units that the orders sent in the period are expected to take from it.
//!
//! The expectation is measured once, on the run's own seeded order stream (so it accounts for
//! the Zipf popularity, the lines and quantities per order, and the duplicate and invalid
//! orders that take nothing); the fractions of a unit are carried to the next period, so a
//! rarely ordered SKU is restocked too, now and then. The same seed and settings give the same
//! restocks for the same orders sent; only their send times differ.
//!
//! Below a factor of 1 the popular SKUs sell out a little before each restock and orders that
//! want them are rejected until it arrives: a steady state with a mix of confirmations and
//! rejections, whose share of rejections grows as the factor falls. At 1 or more the stock
//! only grows and rejections die out.

use std::collections::HashMap;

use schemas::{AdjustmentMode, AdjustmentReason, InventoryAdjusted};

use crate::catalog::Product;
use crate::traffic::{OrderKind, OrderStream, ShapeError, TrafficShape};

/// How many orders of the stream the demand is measured on.
pub const DEMAND_SAMPLE: usize = 20_000;

/// Why restocks cannot be planned.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RestockError {
    #[error("restock factor must be more than 0, got {0}")]
    Factor(f64),
    #[error(transparent)]
    Shape(#[from] ShapeError),
}

/// The expected units that one order of the stream `shape` makes over `catalog` takes from
/// each product (in catalog order), measured on `sample` orders of that stream.
pub fn expected_units_per_order(
    catalog: &[Product],
    shape: &TrafficShape,
    sample: usize,
) -> Result<Vec<f64>, ShapeError> {
    let index: HashMap<&str, usize> = catalog
        .iter()
        .enumerate()
        .map(|(i, p)| (p.sku.as_str(), i))
        .collect();
    let mut stream = OrderStream::new(catalog.to_vec(), shape.clone())?;
    let mut units = vec![0u64; catalog.len()];
    for _ in 0..sample {
        let (kind, order) = stream.next_order(0);
        if kind != OrderKind::Valid {
            continue;
        }
        for line in &order.lines {
            if let Some(&i) = index.get(line.sku.as_str()) {
                units[i] += u64::try_from(line.quantity).unwrap_or(0);
            }
        }
    }
    let sample = sample.max(1) as f64;
    Ok(units.into_iter().map(|u| u as f64 / sample).collect())
}

/// Plans the restocks of one run.
#[derive(Debug)]
pub struct Restocker {
    catalog: Vec<Product>,
    /// Expected units per order sent, per product.
    per_order: Vec<f64>,
    factor: f64,
    /// Units owed to each product but not yet sent (less than one).
    owed: Vec<f64>,
    /// Unique per run: the adjustment ids start with it.
    run_id: String,
    round: u64,
}

impl Restocker {
    /// Restocks for the orders that `shape` makes over `catalog`; `run_id` makes the
    /// adjustment ids unique per run (the processor applies a repeated id once).
    pub fn new(
        catalog: Vec<Product>,
        shape: &TrafficShape,
        factor: f64,
        run_id: String,
    ) -> Result<Self, RestockError> {
        if !(factor.is_finite() && factor > 0.0) {
            return Err(RestockError::Factor(factor));
        }
        let per_order = expected_units_per_order(&catalog, shape, DEMAND_SAMPLE)?;
        Ok(Self {
            owed: vec![0.0; catalog.len()],
            catalog,
            per_order,
            factor,
            run_id,
            round: 0,
        })
    }

    /// The expected units per order sent, per product (catalog order).
    pub fn per_order(&self) -> &[f64] {
        &self.per_order
    }

    /// The restocks due after `orders` more orders were sent: one RESTOCK delta per product
    /// owed a whole unit or more, stamped `adjusted_at`.
    pub fn restock(&mut self, orders: u64, adjusted_at: i64) -> Vec<InventoryAdjusted> {
        self.round += 1;
        let mut out = Vec::new();
        for (i, product) in self.catalog.iter().enumerate() {
            self.owed[i] += self.factor * self.per_order[i] * orders as f64;
            let units = self.owed[i].floor();
            if units < 1.0 {
                continue;
            }
            self.owed[i] -= units;
            out.push(InventoryAdjusted {
                adjustment_id: format!("restock-{}-{:06}-{}", self.run_id, self.round, product.sku),
                sku: product.sku.clone(),
                mode: AdjustmentMode::Delta,
                quantity: units as i64,
                reason: AdjustmentReason::Restock,
                adjusted_at,
                product_name: Some(product.name.clone()),
                unit_price_cents: Some(product.unit_price_cents),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::catalog;

    fn shape() -> TrafficShape {
        TrafficShape {
            duplicate_rate: 0.01,
            invalid_rate: 0.01,
            ..TrafficShape::default()
        }
    }

    #[test]
    fn expected_demand_follows_popularity_and_matches_the_stream() {
        let products = catalog(20, 0);
        let per_order =
            expected_units_per_order(&products, &shape(), DEMAND_SAMPLE).expect("a valid shape");
        assert!(per_order[0] > 5.0 * per_order[23], "{per_order:?}");
        // Lines 1..=3 (mean 2), quantity 1..=3 (mean 2), 98% of orders take stock.
        let total: f64 = per_order.iter().sum();
        assert!((total - 0.98 * 4.0).abs() < 0.1, "{total}");
        // Another stretch of the same stream asks for about as much.
        let mut stream = OrderStream::new(
            products.clone(),
            TrafficShape {
                seed: 99,
                ..shape()
            },
        )
        .expect("a valid shape");
        let mut units = 0i64;
        for _ in 0..10_000 {
            let (kind, order) = stream.next_order(0);
            if kind == OrderKind::Valid {
                units += order
                    .lines
                    .iter()
                    .map(|l| i64::from(l.quantity))
                    .sum::<i64>();
            }
        }
        let measured = units as f64 / 10_000.0;
        assert!((measured - total).abs() < 0.1, "{measured} vs {total}");
    }

    #[test]
    fn restocks_bring_the_factor_of_the_demand_fractions_carried() {
        let products = catalog(200, 0);
        let mut restocker =
            Restocker::new(products.clone(), &shape(), 0.8, "7-1".into()).expect("a restocker");
        let expected: f64 = restocker.per_order().iter().sum::<f64>() * 0.8;
        let mut units: HashMap<String, i64> = HashMap::new();
        let mut ids = std::collections::HashSet::new();
        let rounds = 50;
        for round in 0..rounds {
            for a in restocker.restock(100, round) {
                assert_eq!(
                    (a.mode, a.reason, a.adjusted_at),
                    (AdjustmentMode::Delta, AdjustmentReason::Restock, round)
                );
                assert!(a.quantity >= 1);
                assert!(ids.insert(a.adjustment_id.clone()), "unique ids");
                *units.entry(a.sku).or_default() += a.quantity;
            }
        }
        let total: i64 = units.values().sum();
        let owed = expected * 100.0 * f64::from(rounds as u32);
        assert!(
            (total as f64 - owed).abs() <= products.len() as f64,
            "{total} units restocked, {owed} owed"
        );
        // The least popular SKU, owed a fraction of a unit per round, still gets some.
        assert!(units.contains_key("SKU-000199"), "{units:?}");
        assert!(units["SKU-KEYBOARD"] > 20 * units["SKU-000199"]);
    }

    #[test]
    fn same_seed_same_restocks_and_no_orders_no_restock() {
        let plan = |run_id: &str| {
            let mut r =
                Restocker::new(catalog(10, 0), &shape(), 0.9, run_id.into()).expect("a restocker");
            assert!(r.restock(0, 1).is_empty(), "no orders, nothing owed");
            (0..5).flat_map(|_| r.restock(37, 1)).collect::<Vec<_>>()
        };
        assert_eq!(plan("a"), plan("a"));
        let other = plan("b");
        assert!(other[0].adjustment_id.starts_with("restock-b-000002-"));
    }

    #[test]
    fn a_factor_must_be_positive() {
        for factor in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let refused = Restocker::new(catalog(1, 0), &shape(), factor, "r".into());
            assert!(
                matches!(refused, Err(RestockError::Factor(_))),
                "{factor}: {refused:?}"
            );
        }
    }
}
