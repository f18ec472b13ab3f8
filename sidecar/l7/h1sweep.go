package l7

import (
	"sync"
	"time"
)

// h1SweepEvery is how often the sweeper looks at the connections it lists: a request is
// seen running for h1WatchDelay at most h1SweepEvery after it has, so within
// h1WatchDelay+h1SweepEvery = 1.5×h1WatchDelay of its start.
const h1SweepEvery = h1WatchDelay / 2

// h1sweeper is the client-gone watch's clock, one per H1Server: instead of a timer per
// busy connection (whose every firing runs on a new goroutine, thousands per second
// under load), one timer looks at all the connections that have been busy lately,
// every h1SweepEvery while there are some, and stops when there are none.
//
// The list is a slice in which each connection knows its position (h1conn.sweepPos):
// a sweep walks it in order without chasing pointers or allocating, and a connection
// leaves it in constant time by moving the last one into its place. A map would cost
// an allocation per insertion and a slower walk; the order of the list means nothing.
//
// A connection joins (join) on its idle→busy transition, not per request: it stays
// listed while requests keep coming (see h1conn.look), so a busy connection's requests
// never touch the sweeper. The sweeper's lock is taken before a connection's wmu.
//
// All methods are safe to call concurrently.
type h1sweeper struct {
	mu      sync.Mutex
	conns   []*h1conn // the listed connections; conns[i].sweepPos == i+1
	timer   *time.Timer
	running bool           // the timer is set or sweep is running: the sweeper is not done
	stopped bool           // stop was called: the timer is not set again
	done    sync.WaitGroup // 1 while running
	joins   int            // connections listed so far (tests)
	// onSweep, if not nil, is called at the end of each sweep with the number of
	// connections still listed (tests). It is set before the server serves.
	onSweep func(listed int)
}

// join lists c, whose watch has just been armed (c.armed set by its goroutine), and
// starts the timer if it was not running.
func (w *h1sweeper) join(c *h1conn) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.conns = append(w.conns, c)
	c.sweepPos = len(w.conns)
	w.joins++
	if w.running || w.stopped {
		return
	}
	w.running = true
	w.done.Add(1)
	if w.timer == nil {
		w.timer = time.AfterFunc(h1SweepEvery, w.sweep)
	} else {
		w.timer.Reset(h1SweepEvery)
	}
}

// leave takes c off the list if it is there (its connection is closing).
func (w *h1sweeper) leave(c *h1conn) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if c.sweepPos > 0 {
		w.removeAt(c.sweepPos - 1)
	}
}

// removeAt takes the connection at index i off the list; it runs with w.mu held.
func (w *h1sweeper) removeAt(i int) {
	last := len(w.conns) - 1
	w.conns[i].sweepPos = 0
	if i != last {
		w.conns[i] = w.conns[last]
		w.conns[i].sweepPos = i + 1
	}
	w.conns[last] = nil
	w.conns = w.conns[:last]
}

// sweep runs on the timer's goroutine: it looks at every listed connection (h1conn.look),
// drops those that need no more looking at, and sets the timer again while some are left.
func (w *h1sweeper) sweep() {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	for i := 0; i < len(w.conns); {
		if w.conns[i].look(now) {
			i++
		} else {
			w.removeAt(i) // the last one moved to i: look at it next
		}
	}
	if w.onSweep != nil {
		w.onSweep(len(w.conns))
	}
	if len(w.conns) == 0 || w.stopped {
		w.running = false
		w.done.Done()
		return
	}
	w.timer.Reset(h1SweepEvery)
}

// stop stops the timer for good and waits for a sweep in progress to end.
func (w *h1sweeper) stop() {
	w.mu.Lock()
	w.stopped = true
	if w.running && w.timer.Stop() {
		w.running = false
		w.done.Done()
	}
	w.mu.Unlock()
	w.done.Wait()
}
