package queue

import (
	"context"
	"fmt"

	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	depth          prometheus.Gauge
	oldest         prometheus.Gauge
	publish        prometheus.Histogram
	packSize       prometheus.Histogram
	splitBatch     prometheus.Histogram
	redeliveries   prometheus.Counter
	stale          prometheus.Counter
	resplitAvoided prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		depth:          gauge("mailfleet_queue_depth", "Messages in the queue stream: accepted, waiting for delivery or for a retry, or being delivered."),
		oldest:         gauge("mailfleet_queue_oldest_age_seconds", "Age of the oldest message in the queue stream (a retried message counts from its latest retry)."),
		publish:        histogram("mailfleet_queue_publish_seconds", "Time from Commit to JetStream's acknowledgement of an accepted message (what the SMTP client waits for its 250).", prometheus.ExponentialBuckets(0.0005, 2, 16)),
		packSize:       histogram("mailfleet_queue_commit_messages", "Messages written by one group commit (one stream message, one sync).", prometheus.ExponentialBuckets(1, 2, 10)),
		splitBatch:     histogram("mailfleet_queue_split_messages", "Messages moved from accepted packs to delivery by one atomic batch.", prometheus.ExponentialBuckets(1, 2, 11)),
		redeliveries:   counter("mailfleet_queue_redeliveries_total", "Messages handed out again because their previous delivery ended without Done or Retry (a crash, or AckWait passed without Touch); each may reach its recipients twice."),
		stale:          counter("mailfleet_queue_stale_copies_total", "Copies of already finished messages handed out again after a crash (recorded as finished, or split again with their body parts gone), dropped."),
		resplitAvoided: counter("mailfleet_queue_resplit_avoided_total", "Packs handed out again after a crash that had been split already, recognised by their marker."),
	}
	if reg != nil {
		reg.MustRegister(m.depth, m.oldest, m.publish, m.packSize, m.splitBatch, m.redeliveries, m.stale, m.resplitAvoided)
	}
	return m
}

// gauge, histogram and counter spare newMetrics the Opts literals.
func gauge(name, help string) prometheus.Gauge {
	return prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
}

func histogram(name, help string, buckets []float64) prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets})
}

func counter(name, help string) prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
}

// metricsLoop reads depth and age from the stream's state.
func (q *Queue) metricsLoop() {
	t := time.NewTicker(q.opts.MetricsInterval)
	defer t.Stop()
	for {
		q.updateGauges()
		select {
		case <-q.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Depth is the number of messages in the queue: accepted, waiting for
// delivery or for a retry, or being delivered. A pack of messages not yet
// split counts once. Acknowledged messages that reap has not purged yet and
// split markers do not count. It is read in several requests, so a message
// moving meanwhile may count twice or not at all, and a message queued a
// moment ago may not count yet (see Settled).
func (q *Queue) Depth(ctx context.Context) (uint64, error) {
	d, _, err := q.depth(ctx)
	return d, err
}

// Settled reports whether every message the queue's stream holds has been
// handed out and finished: no pack waits to be split, no message waits to
// be taken or is being delivered, none waits for a retry. Unlike Depth it
// is exact the moment a commit returns: the server counts a consumer's
// pending messages after it acknowledged the publish (its stream signals
// consumers on a goroutine of its own), so for that moment Depth can read 0
// with a message just queued. Settled compares the last stored sequence of
// each consumer's subject with the last the consumer handed out instead.
// It errs only one way: the splitter acknowledges a pack after publishing
// its messages, so for a moment after the last of them is finished the
// queue still reads unsettled; it never reads settled early.
func (q *Queue) Settled(ctx context.Context) (bool, error) {
	scheduled, _, err := q.scheduled(ctx)
	if err != nil || scheduled > 0 {
		return false, err
	}
	for _, c := range []struct {
		consumer jetstream.Consumer
		subjects []string
	}{{q.split, []string{q.subjIn, q.subjHeld}}, {q.deliver, []string{q.subjQ}}} {
		info, err := c.consumer.Info(ctx)
		if err != nil {
			return false, fmt.Errorf("read queue state: %w", err)
		}
		if info.NumAckPending > 0 || info.NumPending > 0 {
			return false, nil
		}
		for _, subject := range c.subjects {
			last, err := q.lastSeq(ctx, subject)
			if err != nil {
				return false, fmt.Errorf("read queue state: %w", err)
			}
			if last > info.Delivered.Stream {
				return false, nil
			}
		}
	}
	return true, nil
}

func (q *Queue) depth(ctx context.Context) (uint64, *jetstream.StreamInfo, error) {
	scheduled, info, err := q.scheduled(ctx)
	if err != nil {
		return 0, nil, err
	}
	n := scheduled
	for _, c := range []jetstream.Consumer{q.split, q.deliver} {
		ci, err := c.Info(ctx)
		if err != nil {
			return 0, nil, fmt.Errorf("read queue state: %w", err)
		}
		n += ci.NumPending + uint64(ci.NumAckPending)
	}
	return n, info, nil
}

// scheduled counts the messages waiting for a retry: what the stream holds
// on none of its other subjects. Counting them by their own subjects would
// list one subject per message.
func (q *Queue) scheduled(ctx context.Context) (uint64, *jetstream.StreamInfo, error) {
	var others uint64
	var info *jetstream.StreamInfo
	for _, filter := range []string{q.subjSplit + ".>", q.subjIn, q.subjQ} {
		i, err := q.stream.Info(ctx, jetstream.WithSubjectFilter(filter))
		if err != nil {
			return 0, nil, fmt.Errorf("read queue state: %w", err)
		}
		for _, c := range i.State.Subjects {
			others += c
		}
		info = i
	}
	return info.State.Msgs - min(others, info.State.Msgs), info, nil
}

func (q *Queue) updateGauges() {
	ctx, cancel := context.WithTimeout(q.ctx, 5*time.Second)
	defer cancel()
	depth, info, err := q.depth(ctx)
	if err != nil {
		if q.ctx.Err() == nil {
			q.log.Warn("read queue state", "err", err)
		}
		return
	}
	age := 0.0
	if depth > 0 && !info.State.FirstTime.IsZero() {
		age = time.Since(info.State.FirstTime).Seconds()
	}
	q.metrics.depth.Set(float64(depth))
	q.metrics.oldest.Set(age)
}
