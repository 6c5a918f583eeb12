//! The one error type of the crate. Every public entry point validates its arguments before it
//! touches an output buffer, and reports the first problem it finds as one of these variants,
//! naming the argument, what was expected and what was found.

use std::fmt::Display;

/// What went wrong, and with which argument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An array's shape (rank or extents) is not the one the call needs.
    #[error("{arg}: expected shape {expected}, found {found}")]
    Shape {
        /// The argument (or parameter) at fault, as the signature or the notebook names it.
        arg: &'static str,
        /// What the call needs.
        expected: String,
        /// What it was given.
        found: String,
    },
    /// A scalar parameter is out of its domain (zero stride, p outside (0, 1], ...).
    #[error("{arg}: expected {expected}, found {found}")]
    Param {
        /// The argument (or parameter) at fault, as the signature or the notebook names it.
        arg: &'static str,
        /// What the call needs.
        expected: String,
        /// What it was given.
        found: String,
    },
    /// A label is not a valid class index.
    #[error("{arg}: expected every label in 0..{classes}, found {label} at index {index}")]
    Label {
        /// The argument (or parameter) at fault, as the signature or the notebook names it.
        arg: &'static str,
        /// Position of the first bad label.
        index: usize,
        /// Its value.
        label: usize,
        /// Number of classes (scores' columns).
        classes: usize,
    },
    /// A cache handed to a backward pass does not belong to this layer or these shapes.
    #[error("{arg}: expected {expected}, found {found}")]
    Cache {
        /// The argument (or parameter) at fault, as the signature or the notebook names it.
        arg: &'static str,
        /// What the call needs.
        expected: String,
        /// What it was given.
        found: String,
    },
    /// A buffer the call needs could not be allocated (the allocator refused, or its size in
    /// bytes exceeds isize::MAX): reported instead of aborting the process.
    #[error("{arg}: cannot allocate {elems} elements of {elem_bytes} bytes")]
    Alloc {
        /// The buffer (output or workspace) that could not be allocated.
        arg: &'static str,
        /// Its element count.
        elems: usize,
        /// Bytes per element.
        elem_bytes: usize,
    },
    /// Size arithmetic (element counts, padded extents, workspace bytes) overflows usize.
    #[error("{arg}: size arithmetic overflows ({what})")]
    Overflow {
        /// The argument whose size overflows.
        arg: &'static str,
        /// Which quantity.
        what: String,
    },
}

/// The result of every fallible call of the crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn shape(arg: &'static str, expected: impl Display, found: impl Display) -> Self {
        Error::Shape {
            arg,
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }
    pub(crate) fn param(arg: &'static str, expected: impl Display, found: impl Display) -> Self {
        Error::Param {
            arg,
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }
    pub(crate) fn cache(arg: &'static str, expected: impl Display, found: impl Display) -> Self {
        Error::Cache {
            arg,
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }
    /// The argument this error is about.
    pub fn arg(&self) -> &'static str {
        match self {
            Error::Shape { arg, .. }
            | Error::Param { arg, .. }
            | Error::Label { arg, .. }
            | Error::Cache { arg, .. }
            | Error::Overflow { arg, .. }
            | Error::Alloc { arg, .. } => arg,
        }
    }
}

/// Formats a shape the way numpy prints it: `(2, 3, 4)`, `(5,)`.
pub(crate) fn fmt_shape(shape: &[usize]) -> String {
    match shape {
        [one] => format!("({one},)"),
        _ => {
            let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            format!("({})", parts.join(", "))
        }
    }
}

/// `arg` must have exactly `expected` as its shape.
pub(crate) fn expect_shape(arg: &'static str, found: &[usize], expected: &[usize]) -> Result<()> {
    if found == expected {
        Ok(())
    } else {
        Err(Error::shape(arg, fmt_shape(expected), fmt_shape(found)))
    }
}

/// `arg` must have rank `rank`; `layout` names the axes for the message, e.g. "(N, C, H, W)".
pub(crate) fn expect_rank(
    arg: &'static str,
    found: &[usize],
    rank: usize,
    layout: &str,
) -> Result<()> {
    if found.len() == rank {
        Ok(())
    } else {
        Err(Error::shape(
            arg,
            format!("rank {rank} {layout}"),
            format!("rank {} {}", found.len(), fmt_shape(found)),
        ))
    }
}

/// Product of extents with overflow checking.
/// A caller's workspace of at least `need` elements (`query` names the method that says how many).
pub(crate) fn check_workspace<T>(ws: &[T], need: usize, query: &str) -> Result<()> {
    if ws.len() < need {
        return Err(Error::shape(
            "workspace",
            format!("at least {need} elements ({query})"),
            format!("{} elements", ws.len()),
        ));
    }
    Ok(())
}

pub(crate) fn checked_numel(arg: &'static str, shape: &[usize]) -> Result<usize> {
    shape.iter().try_fold(1usize, |acc, &d| {
        acc.checked_mul(d).ok_or_else(|| Error::Overflow {
            arg,
            what: format!("element count of {}", fmt_shape(shape)),
        })
    })
}

/// `n` copies of `value`, or [`Error::Alloc`] naming `arg` when the allocator refuses (never an
/// abort on allocation failure, never a capacity-overflow panic).
pub(crate) fn try_filled<T: Clone>(arg: &'static str, n: usize, value: T) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| Error::Alloc {
        arg,
        elems: n,
        elem_bytes: std::mem::size_of::<T>(),
    })?;
    crate::cpu::advise_huge_pages(v.spare_capacity_mut());
    v.resize(n, value);
    Ok(v)
}

pub(crate) fn overflow(arg: &'static str, what: impl Display) -> Error {
    Error::Overflow {
        arg,
        what: what.to_string(),
    }
}
