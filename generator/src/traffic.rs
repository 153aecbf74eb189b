//! Order traffic: a deterministic stream of `OrderCreated` drawn from a catalog.
//!
//! Given the same seed and settings, [`OrderStream`] yields the same orders in the same order
//! (ids, customers, lines, prices); only `created_at`, the wall-clock time at which an order is
//! sent, differs between runs. SKU popularity is Zipf-distributed over the catalog; a chosen
//! share of orders repeats an earlier order id (a duplicate the processor must not decide
//! twice), and a chosen share is invalid (no lines, a quantity <= 0, or a negative price).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use schemas::{OrderCreated, OrderLine};

use crate::catalog::Product;

/// How the stream is shaped.
#[derive(Debug, Clone, PartialEq)]
pub struct TrafficShape {
    /// The seed of every random choice.
    pub seed: u64,
    /// Lines per order are uniform in `1..=max_lines`.
    pub max_lines: u32,
    /// Quantity per line is uniform in `1..=max_quantity`.
    pub max_quantity: i32,
    /// The Zipf exponent of SKU popularity (0 is uniform; 1 is classic Zipf).
    pub zipf_exponent: f64,
    /// Share of orders that repeat an earlier order id, in [0, 1].
    pub duplicate_rate: f64,
    /// Share of orders that are invalid, in [0, 1].
    pub invalid_rate: f64,
    /// How many distinct customers place orders.
    pub customers: u32,
}

impl Default for TrafficShape {
    fn default() -> Self {
        Self {
            seed: 42,
            max_lines: 3,
            max_quantity: 3,
            zipf_exponent: 1.0,
            duplicate_rate: 0.0,
            invalid_rate: 0.0,
            customers: 10_000,
        }
    }
}

/// What kind of order the stream produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderKind {
    Valid,
    Invalid,
    /// A repeat of an earlier order (same id and content).
    Duplicate,
}

/// Why a [`TrafficShape`] cannot make a stream.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ShapeError {
    #[error("the catalog is empty")]
    EmptyCatalog,
    #[error("{what} must be between 0 and 1, got {value}")]
    NotAShare { what: &'static str, value: f64 },
    #[error("{what} must be at least 1")]
    Zero { what: &'static str },
    #[error("zipf exponent must be >= 0 and finite, got {0}")]
    Zipf(f64),
}

/// How many recent orders a duplicate may repeat.
const RECENT: usize = 1024;

/// An endless, deterministic stream of orders.
#[derive(Debug)]
pub struct OrderStream {
    shape: TrafficShape,
    catalog: Vec<Product>,
    popularity: Zipf<f64>,
    rng: StdRng,
    next_id: u64,
    recent: Vec<OrderCreated>,
}

impl OrderStream {
    pub fn new(catalog: Vec<Product>, shape: TrafficShape) -> Result<Self, ShapeError> {
        if catalog.is_empty() {
            return Err(ShapeError::EmptyCatalog);
        }
        for (what, value) in [
            ("duplicate rate", shape.duplicate_rate),
            ("invalid rate", shape.invalid_rate),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(ShapeError::NotAShare { what, value });
            }
        }
        if shape.max_lines == 0 {
            return Err(ShapeError::Zero { what: "max lines" });
        }
        if shape.max_quantity < 1 {
            return Err(ShapeError::Zero {
                what: "max quantity",
            });
        }
        if shape.customers == 0 {
            return Err(ShapeError::Zero { what: "customers" });
        }
        let popularity = Zipf::new(catalog.len() as f64, shape.zipf_exponent)
            .map_err(|_| ShapeError::Zipf(shape.zipf_exponent))?;
        Ok(Self {
            rng: StdRng::seed_from_u64(shape.seed),
            shape,
            catalog,
            popularity,
            next_id: 0,
            recent: Vec::with_capacity(RECENT),
        })
    }

    /// The next order, stamped `created_at`.
    pub fn next_order(&mut self, created_at: i64) -> (OrderKind, OrderCreated) {
        let roll: f64 = self.rng.random();
        if roll < self.shape.duplicate_rate && !self.recent.is_empty() {
            let pick = self.rng.random_range(0..self.recent.len());
            let mut again = self.recent[pick].clone();
            again.created_at = created_at;
            return (OrderKind::Duplicate, again);
        }
        let invalid = roll < self.shape.duplicate_rate + self.shape.invalid_rate;
        let mut order = self.fresh_order(created_at);
        if invalid {
            self.spoil(&mut order);
        }
        if self.recent.len() < RECENT {
            self.recent.push(order.clone());
        } else {
            let slot = (self.next_id as usize) % RECENT;
            self.recent[slot] = order.clone();
        }
        (
            if invalid {
                OrderKind::Invalid
            } else {
                OrderKind::Valid
            },
            order,
        )
    }

    fn fresh_order(&mut self, created_at: i64) -> OrderCreated {
        let id = self.next_id;
        self.next_id += 1;
        let line_count = self.rng.random_range(1..=self.shape.max_lines) as usize;
        let mut lines: Vec<OrderLine> = Vec::with_capacity(line_count);
        // Distinct SKUs per order; a small catalog caps the line count.
        for _ in 0..line_count * 4 {
            if lines.len() == line_count.min(self.catalog.len()) {
                break;
            }
            let rank = self.popularity.sample(&mut self.rng) as usize;
            let product = &self.catalog[rank.clamp(1, self.catalog.len()) - 1];
            if lines.iter().all(|l| l.sku != product.sku) {
                lines.push(OrderLine {
                    sku: product.sku.clone(),
                    quantity: self.rng.random_range(1..=self.shape.max_quantity),
                    unit_price_cents: product.unit_price_cents,
                });
            }
        }
        OrderCreated {
            order_id: format!("order-{}-{id:010}", self.shape.seed),
            customer_id: format!(
                "customer-{:06}",
                self.rng.random_range(0..self.shape.customers)
            ),
            created_at,
            currency: "EUR".to_owned(),
            lines,
        }
    }

    /// Makes `order` invalid in one of the ways the processor must reject.
    fn spoil(&mut self, order: &mut OrderCreated) {
        match self.rng.random_range(0..3) {
            0 => order.lines.clear(),
            1 => order.lines[0].quantity = -self.rng.random_range(0..=2),
            _ => order.lines[0].unit_price_cents = -1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::catalog;
    use proptest::prelude::*;

    fn stream(shape: TrafficShape) -> OrderStream {
        OrderStream::new(catalog(50, 10), shape).expect("a valid shape")
    }

    #[test]
    fn same_seed_same_orders() {
        let mut a = stream(TrafficShape {
            duplicate_rate: 0.1,
            invalid_rate: 0.1,
            ..Default::default()
        });
        let mut b = stream(TrafficShape {
            duplicate_rate: 0.1,
            invalid_rate: 0.1,
            ..Default::default()
        });
        for _ in 0..1000 {
            assert_eq!(a.next_order(1), b.next_order(1));
        }
        let mut c = stream(TrafficShape {
            seed: 7,
            ..Default::default()
        });
        let mut d = stream(TrafficShape::default());
        assert_ne!(c.next_order(1), d.next_order(1));
    }

    #[test]
    fn rejects_bad_shapes() {
        let bad = |shape| OrderStream::new(catalog(1, 1), shape).err();
        assert_eq!(
            bad(TrafficShape {
                duplicate_rate: 1.5,
                ..Default::default()
            }),
            Some(ShapeError::NotAShare {
                what: "duplicate rate",
                value: 1.5
            })
        );
        assert_eq!(
            bad(TrafficShape {
                max_lines: 0,
                ..Default::default()
            }),
            Some(ShapeError::Zero { what: "max lines" })
        );
        assert_eq!(
            OrderStream::new(Vec::new(), TrafficShape::default()).err(),
            Some(ShapeError::EmptyCatalog)
        );
    }

    #[test]
    fn popular_skus_are_ordered_more_often() {
        let mut s = stream(TrafficShape {
            max_lines: 1,
            ..Default::default()
        });
        let mut first = 0;
        let mut last = 0;
        for _ in 0..20_000 {
            let (_, order) = s.next_order(0);
            match order.lines[0].sku.as_str() {
                "SKU-KEYBOARD" => first += 1,
                "SKU-000049" => last += 1,
                _ => {}
            }
        }
        assert!(
            first > 10 * last,
            "rank 1 ordered {first} times, rank 54 {last} times"
        );
    }

    proptest! {
        #[test]
        fn orders_have_the_promised_shape(seed in any::<u64>(), max_lines in 1u32..6, invalid in 0.0f64..0.5, dup in 0.0f64..0.5) {
            let mut s = stream(TrafficShape { seed, max_lines, invalid_rate: invalid, duplicate_rate: dup, ..Default::default() });
            let mut seen = std::collections::HashSet::new();
            for _ in 0..200 {
                let (kind, order) = s.next_order(5);
                prop_assert_eq!(order.created_at, 5);
                match kind {
                    OrderKind::Valid => {
                        prop_assert!(seen.insert(order.order_id.clone()));
                        prop_assert!(!order.lines.is_empty() && order.lines.len() <= max_lines as usize);
                        prop_assert!(order.lines.iter().all(|l| l.quantity >= 1 && l.unit_price_cents >= 0));
                        let skus: std::collections::HashSet<_> = order.lines.iter().map(|l| &l.sku).collect();
                        prop_assert_eq!(skus.len(), order.lines.len());
                    }
                    OrderKind::Invalid => {
                        prop_assert!(seen.insert(order.order_id.clone()));
                        prop_assert!(order.lines.is_empty() || order.lines.iter().any(|l| l.quantity <= 0 || l.unit_price_cents < 0));
                    }
                    OrderKind::Duplicate => prop_assert!(seen.contains(&order.order_id)),
                }
            }
        }
    }
}
