package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// maxPacksPerSplit bounds the packs one split takes at a time.
const maxPacksPerSplit = 16

// A split is one atomic batch, and on a single-replica stream JetStream
// stages every atomic batch in a file store of its own: a directory and
// two synced metadata files, made and removed again, costing about as
// much as ten pack writes whatever the batch holds. So while fewer than
// splitFew messages wait, the splitter starts a split at most
// defaultSplitEvery after it started the last one, or once it holds
// maxPacksPerSplit packs: with one message per session, packs of a few
// messages each would otherwise make a batch each, and the batches would
// cost the relay about a sixth of its CPU. A queue busy enough to fill
// packs, or quiet enough that the last split is long past, is split at
// once. Only delivery waits for it. (A replicated stream stages batches in
// memory; fewer batches still mean fewer proposals, so the rule is kept.)
const (
	splitFew          = 32
	defaultSplitEvery = 100 * time.Millisecond
	splitPoll         = 10 * time.Millisecond
)

// splitLoop turns packs into per-message stream messages (see the package
// documentation) until the queue closes. A pack is acknowledged only after
// every message in it is on <prefix>.q; until then it stays, and comes back
// after AckWait if this process dies.
func (q *Queue) splitLoop() {
	for q.ctx.Err() == nil {
		packs := q.fetchPacks()
		if len(packs) == 0 {
			continue
		}
		if err := q.splitPacks(packs); err != nil {
			q.log.Error("splitting accepted messages failed; they stay queued and are split again", "packs", len(packs), "err", err)
			for _, m := range packs {
				m.NakWithDelay(time.Second)
			}
			select {
			case <-q.ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

// fetchPacks waits for one pack, then takes whatever else is there, and if
// that is few messages, what arrives until splitEvery after the last split.
func (q *Queue) fetchPacks() []jetstream.Msg {
	first, err := q.fetchOne(q.ctx, q.split)
	if err != nil {
		if !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) && q.ctx.Err() == nil {
			q.log.Warn("fetch accepted messages failed", "err", err)
			select {
			case <-q.ctx.Done():
			case <-time.After(time.Second):
			}
		}
		return nil
	}
	packs := []jetstream.Msg{first}
	messages := packCount(first.Data())
	deadline := q.lastSplit.Add(q.opts.splitEvery)
	defer func() { q.lastSplit = time.Now() }()
	for {
		if len(packs) < maxPacksPerSplit {
			if more, err := q.split.FetchNoWait(maxPacksPerSplit - len(packs)); err == nil {
				for m := range more.Messages() {
					packs = append(packs, m)
					messages += packCount(m.Data())
				}
			}
		}
		wait := time.Until(deadline)
		if messages >= splitFew || wait <= 0 || len(packs) >= maxPacksPerSplit {
			return packs
		}
		// Polled, not pulled with a deadline: a pull request given up
		// client-side strands what the server hands it meanwhile until
		// AckWait (see fetchOne). The server answers a no-wait fetch at
		// once (nats.go gives up on it only after a second of silence).
		select {
		case <-q.ctx.Done():
			// Closing: handed back for the next relay to split, rather
			// than a split that cannot finish.
			for _, m := range packs {
				m.Nak()
			}
			return nil
		case <-time.After(min(wait, splitPoll)):
		}
	}
}

func (q *Queue) splitPacks(packs []jetstream.Msg) error {
	ctx, cancel := context.WithTimeout(q.ctx, publishTimeout)
	defer cancel()
	var msgs []*nats.Msg
	var good, done []jetstream.Msg
	for _, pm := range packs {
		md, err := pm.Metadata()
		if err != nil {
			return fmt.Errorf("pack metadata: %w", err)
		}
		if md.NumDelivered > 1 {
			split, err := q.wasSplit(ctx, md.Sequence.Stream)
			if err != nil {
				return err
			}
			if split {
				// Split before a crash, not acknowledged: its messages
				// are out already and may be delivered and gone, where
				// duplicate detection no longer sees them.
				done = append(done, pm)
				continue
			}
		}
		records, err := unpack(pm.Data())
		if err == nil {
			for _, r := range records {
				if _, _, err = decodeRecord(r.record); err != nil {
					break
				}
			}
		}
		if err != nil {
			q.log.Error("dropping an unreadable pack of accepted messages", "err", err)
			pm.Term()
			continue
		}
		held := pm.Subject() == q.subjHeld && q.hold.Load()
		for _, r := range records {
			m, body, _ := decodeRecord(r.record)
			msg := nats.NewMsg(q.subjQ)
			msg.Data = r.record
			if held && holdsBody(m, body) {
				if msg.Data, err = q.reference(m, md.Sequence.Stream, r.offset); err != nil {
					return err
				}
			}
			// A pack split again while its messages are still queued is
			// deduplicated by id.
			msg.Header.Set(jetstream.MsgIDHeader, m.Envelope.ID)
			msgs = append(msgs, msg)
		}
		// The marker says, in the same atomic batch, that this pack is
		// split; it expires on its own once nobody can ask any more.
		marker := nats.NewMsg(q.splitMarker(md.Sequence.Stream))
		marker.Header.Set(jetstream.MsgTTLHeader, q.markerTTL().String())
		msgs = append(msgs, marker)
		good = append(good, pm)
	}
	for start := 0; start < len(msgs); start += maxSplitBatch {
		chunk := msgs[start:min(start+maxSplitBatch, len(msgs))]
		if err := q.publishAtomic(ctx, chunk); err != nil {
			// Most likely some were split before a crash: the whole
			// batch is refused as holding duplicates. One by one, the
			// server acknowledges duplicates without storing them.
			q.log.Info("atomic batch refused; publishing one by one", "messages", len(chunk), "err", err)
			for _, m := range chunk {
				if _, err := q.js.PublishMsg(ctx, m); err != nil {
					return fmt.Errorf("publish message %s for delivery: %w", m.Header.Get(jetstream.MsgIDHeader), err)
				}
			}
		}
	}
	for _, pm := range append(good, done...) {
		if err := pm.DoubleAck(ctx); err != nil {
			// The pack comes back; its marker says it is split.
			q.log.Warn("ack of a split pack failed", "err", err)
		}
	}
	if len(done) > 0 {
		q.metrics.resplitAvoided.Add(float64(len(done)))
	}
	q.metrics.splitBatch.Observe(float64(len(msgs) - len(good)))
	return nil
}

// markerTTL outlives a pack's redelivery, which comes AckWait after the
// pack was handed out, or after the restart that follows a crash.
func (q *Queue) markerTTL() time.Duration {
	return max(2*q.opts.AckWait, time.Minute)
}

func (q *Queue) splitMarker(packSeq uint64) string {
	return q.subjSplit + "." + strconv.FormatUint(packSeq, 10)
}

// wasSplit reports whether the pack at packSeq was split before.
func (q *Queue) wasSplit(ctx context.Context, packSeq uint64) (bool, error) {
	_, found, err := q.leaderGet(ctx, 0, q.splitMarker(packSeq))
	if err != nil {
		return false, fmt.Errorf("look for the split marker of pack %d: %w", packSeq, err)
	}
	return found, nil
}

// publishAtomic writes msgs as one JetStream atomic batch (PublishAtomic).
func (q *Queue) publishAtomic(ctx context.Context, msgs []*nats.Msg) error {
	return PublishAtomic(ctx, q.nc, q.js, msgs)
}

// PublishAtomic writes msgs as one JetStream atomic batch to a stream that
// allows it: on a single server it is synced once for the whole batch, and
// either every message is stored or none. The events producer shares it.
func PublishAtomic(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, msgs []*nats.Msg) error {
	if len(msgs) == 1 {
		_, err := js.PublishMsg(ctx, msgs[0])
		return err
	}
	id := nuid.Next()
	for i, m := range msgs {
		m.Header.Set("Nats-Batch-Id", id)
		m.Header.Set("Nats-Batch-Sequence", strconv.Itoa(i+1))
		if i < len(msgs)-1 {
			if err := nc.PublishMsg(m); err != nil {
				return fmt.Errorf("publish batch message %d: %w", i+1, err)
			}
			continue
		}
		m.Header.Set("Nats-Batch-Commit", "1")
		resp, err := nc.RequestMsgWithContext(ctx, m)
		// Later one-by-one publishing must not carry batch headers.
		defer func() {
			for _, m := range msgs {
				m.Header.Del("Nats-Batch-Id")
				m.Header.Del("Nats-Batch-Sequence")
				m.Header.Del("Nats-Batch-Commit")
			}
		}()
		if err != nil {
			return fmt.Errorf("commit batch of %d: %w", len(msgs), err)
		}
		var ack struct {
			Error *struct {
				Code        int    `json:"code"`
				ErrCode     int    `json:"err_code"`
				Description string `json:"description"`
			} `json:"error"`
			Count int `json:"count"`
		}
		if err := json.Unmarshal(resp.Data, &ack); err != nil {
			return fmt.Errorf("commit batch of %d: reply %q: %w", len(msgs), resp.Data, err)
		}
		if ack.Error != nil {
			return fmt.Errorf("commit batch of %d: %s (%d)", len(msgs), ack.Error.Description, ack.Error.ErrCode)
		}
		if ack.Count != len(msgs) {
			return fmt.Errorf("commit batch of %d: server stored %d", len(msgs), ack.Count)
		}
	}
	return nil
}
