//! A flow-control window (RFC 9113, section 6.9) with checked arithmetic:
//! the one place the bounds of a window are enforced.

/// The largest flow-control window (2^31 - 1).
pub(crate) const MAX_WINDOW: u32 = (1 << 31) - 1;

/// What one side may still send on a stream or a connection.
///
/// Never above 2^31-1; below zero only after a smaller
/// SETTINGS_INITIAL_WINDOW_SIZE (section 6.9.2), when nothing may be sent
/// until WINDOW_UPDATEs bring it back up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Window(i64);

/// Why a window change was refused (the window is left as it was).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WindowError {
    /// More bytes than the window holds (a peer sending beyond it).
    Exceeded,
    /// The window would grow above 2^31-1 (section 6.9.1).
    Overflow,
}

impl Window {
    /// A window of `size` bytes (at most 2^31-1).
    pub(crate) fn new(size: u32) -> Window {
        Window(i64::from(size.min(MAX_WINDOW)))
    }

    /// How many bytes may still be sent: none while at or below zero.
    pub(crate) fn available(self) -> u32 {
        u32::try_from(self.0.max(0)).unwrap_or(MAX_WINDOW)
    }

    /// Takes `n` bytes out of the window; more than it holds is an error.
    pub(crate) fn consume(&mut self, n: u32) -> Result<(), WindowError> {
        if n > self.available() {
            return Err(WindowError::Exceeded);
        }
        self.0 -= i64::from(n);
        Ok(())
    }

    /// Gives `n` bytes back (a WINDOW_UPDATE); above 2^31-1 is an error.
    pub(crate) fn grant(&mut self, n: u32) -> Result<(), WindowError> {
        self.moved(i64::from(n))
    }

    /// Gives back `n` bytes this side took out of its own receive window:
    /// never more than it took, so never past the size it started at.
    pub(crate) fn give_back(&mut self, n: u32) {
        let given = self.grant(n);
        debug_assert!(
            given.is_ok(),
            "a receive window given back more than it took"
        );
    }

    /// Moves the window by the change of the initial window size from
    /// `old` to `new` (section 6.9.2): down possibly below zero, up to
    /// at most 2^31-1.
    pub(crate) fn resize(&mut self, old: u32, new: u32) -> Result<(), WindowError> {
        self.moved(i64::from(new) - i64::from(old))
    }

    fn moved(&mut self, delta: i64) -> Result<(), WindowError> {
        let moved = self.0 + delta;
        if moved > i64::from(MAX_WINDOW) {
            return Err(WindowError::Overflow);
        }
        self.0 = moved;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consuming_takes_bytes_up_to_what_the_window_holds() {
        let mut w = Window::new(100);
        assert_eq!(w.consume(60), Ok(()));
        assert_eq!(w.available(), 40);
        assert_eq!(w.consume(40), Ok(()));
        assert_eq!(w.available(), 0);
        // Nothing is still fine; one byte more is not, and changes nothing.
        assert_eq!(w.consume(0), Ok(()));
        assert_eq!(w.consume(1), Err(WindowError::Exceeded));
        assert_eq!(w.available(), 0);
        assert_eq!(w.grant(10), Ok(()));
        assert_eq!(w.consume(11), Err(WindowError::Exceeded));
        assert_eq!(w.available(), 10);
    }

    #[test]
    fn granting_stops_at_two_to_the_31_minus_one() {
        let mut w = Window::new(65_535);
        assert_eq!(w.grant(MAX_WINDOW - 65_535), Ok(()));
        assert_eq!(w.available(), MAX_WINDOW);
        assert_eq!(w.grant(1), Err(WindowError::Overflow));
        assert_eq!(w.available(), MAX_WINDOW, "a refused grant changes nothing");
        // The largest increment a WINDOW_UPDATE can carry, on an empty window.
        let mut empty = Window::new(0);
        assert_eq!(empty.grant(MAX_WINDOW), Ok(()));
        assert_eq!(empty.grant(u32::MAX), Err(WindowError::Overflow));
        assert_eq!(Window::new(u32::MAX).available(), MAX_WINDOW);
    }

    #[test]
    fn a_smaller_initial_window_can_take_a_window_below_zero() {
        let mut w = Window::new(65_535);
        w.consume(60_000).unwrap();
        assert_eq!(w.resize(65_535, 1_000), Ok(()));
        // 1,000 - 60,000: nothing may be sent until 59,000 come back.
        assert_eq!(w.available(), 0);
        assert_eq!(w.consume(1), Err(WindowError::Exceeded));
        w.grant(59_000).unwrap();
        assert_eq!(w.available(), 0);
        w.grant(5).unwrap();
        assert_eq!(w.available(), 5);
    }

    #[test]
    fn a_larger_initial_window_cannot_take_a_window_above_the_largest() {
        let mut w = Window::new(MAX_WINDOW - 10);
        assert_eq!(w.resize(65_535, 65_545), Ok(()));
        assert_eq!(w.available(), MAX_WINDOW);
        assert_eq!(w.resize(65_535, 65_536), Err(WindowError::Overflow));
        assert_eq!(w.available(), MAX_WINDOW);
    }
}
