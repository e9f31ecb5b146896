// Package queue is the relay's durable queue on NATS JetStream: the SMTP
// server commits accepted messages to it (spool.Spool) and the delivery
// workers take them from it (spool.Consumer). It runs against an external,
// replicated JetStream for a fleet, or embeds nats-server in the process
// with a file store for dev and single-node use.
//
// # Layout
//
// The queue stream (limits retention: acknowledged messages are purged in
// bulk, see reap) has these kinds of subjects,
// under a prefix that is the stream name in lower case:
//
//   - <prefix>.in: packs of freshly accepted messages, one stream message
//     per group commit;
//   - <prefix>.q: one stream message per message to deliver, what the
//     delivery workers consume;
//   - <prefix>.sched.<id>: a message waiting for its next retry, a JetStream
//     message schedule that the server republishes to <prefix>.q when due;
//   - <prefix>.split.<seq>: a marker, written with the split messages, that
//     the pack at stream sequence seq has been split (it expires after
//     twice AckWait, at least a minute);
//   - <prefix>.split.held: packs holding a large record (see below), kept
//     until every message delivered from them is done.
//
// A second stream, <STREAM>_BODY (limits retention), holds the bodies of
// large messages in parts, on <prefix>.body.<id>.<n>.
//
// # Why packs: the group commit
//
// A 250 is sent only after JetStream acknowledged the write, and every
// JetStream we run syncs to disk before it acknowledges (sync_interval:
// always). On this project's 2-core machine one fsync takes
// 2–4 ms, so one stream message per accepted message caps the relay at
// about 500 messages/s, whatever the number of sessions. JetStream's atomic
// batch publish coalesces a batch into one sync, but it stages every batch
// in a temporary file store, about 15 ms each, and a batch can only hold the
// messages whose sessions are waiting (at most one per session). So the
// relay commits in groups itself: one committer takes every message whose
// Commit is waiting and writes them as one pack, a single stream message
// and a single sync; the messages that arrive meanwhile form the next pack.
// A splitter in every relay pod then turns each pack into per-message
// stream messages on <prefix>.q, many packs at a time in one atomic batch
// (one sync for hundreds), so that each message is acknowledged, retried
// and redelivered on its own. On a single-replica stream the batch's
// staging costs as much whatever it holds, so while few messages wait the
// splitter gathers packs for up to 100 ms after its last split began (see
// splitFew).
//
// A splitter may die after the batch but before
// its acknowledgement of the packs reached the disk; the batch also holds a
// marker per pack, so a pack handed out again is recognised and only
// acknowledged. (The split messages carry Nats-Msg-Id too, but the server's
// duplicate detection forgets a message once it is delivered and removed.)
//
// # Why held packs: large messages in the group commit
//
// Copied out of its pack, a large record's bytes would be written three
// times (the pack, the atomic batch's staging, the split copy); published
// on its own, once, but with a sync of its own, taken one at a time in the
// stream's write path. So a pack holding a record of 32 KiB or more goes
// to <prefix>.split.held, and the splitter puts on <prefix>.q, for each such
// record, a reference: the envelope and where the record is in the pack.
// The body is written once and shares its pack's sync; delivery reads the
// pack (a direct get, one read for every message in it: the packs read
// lately are cached). A held pack cannot be purged at the splitter's ack
// floor like the others: reap purges it only once the delivery ack floor
// has passed every reference that can name it (see heldMark); a message
// that stays long in delivery holds the packs after it on disk as it holds
// the acknowledged messages after it. A retry carries the body itself, so
// nothing scheduled depends on a pack.
//
// A relay of an earlier release cannot read a reference and would drop it,
// and shares the stream with this one during a rolling upgrade. So only a
// stream this release made holds large records (see heldPacksKey); on one
// an earlier release made, a record of 32 KiB or more is published alone to
// <prefix>.q as that release did (see directMin), and nothing changes for
// the relays still running it. Held packs sit under split.>, which every
// queue stream has had, so even an earlier relay updating a holding stream
// at its start (a downgrade, which needs the queue drained) removes no
// subject this one writes to.
//
// # Why parts: large messages
//
// NATS' default max_payload is 1 MiB (the server's hard ceiling is 64 MiB),
// while the relay accepts 16,000,000 bytes. Raising max_payload would work
// for the embedded server but not for a cluster someone else runs, makes
// every client and route buffer messages of that size in memory, and holds
// a 16 MB write in the stream's single ingest path in front of every small
// message's commit. So a body larger than a part (512 KiB, or less when the
// server's max_payload is small) is published while DATA arrives, part by
// part, to the body stream; the queued record then names its parts. A
// session holds at most one part in memory, however large its message. The
// cost is one sync per part (about 32 for a 16 MB message) and the body
// stream's bookkeeping: parts are purged when the message is done, and
// parts orphaned by a crash between the parts and the commit expire with
// the body stream's MaxAge (default 14 days, longer than any message may
// stay queued).
//
// # Retries
//
// Retry publishes a schedule (Nats-Schedule: @at <time>) holding the
// updated record, only the remaining recipients and one more attempt, waits
// for its acknowledgement, then acknowledges the message being delivered.
// A crash between the two steps leaves both, so the remaining recipients
// may get the message twice, never zero times.
package queue

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/relay/spool"
)

// Defaults.
const (
	DefaultAckWait       = time.Minute
	DefaultMaxAckPending = 10_000
	DefaultBodyMaxAge    = 14 * 24 * time.Hour
	// DefaultExternalReplicas is the replica count of streams the relay
	// creates on an external JetStream: a quorum of 2 of 3 acknowledges.
	DefaultExternalReplicas = 3
	// maxPartSize is the largest body part; smaller when the server's
	// max_payload leaves less room.
	maxPartSize = 512 << 10
	// publishTimeout bounds one JetStream write.
	publishTimeout = 30 * time.Second
	// maxSplitBatch is the most messages in one atomic batch (the server's
	// default limit is 1000).
	maxSplitBatch = 1000
	// duplicateWindow is how long the server remembers Nats-Msg-Id.
	duplicateWindow = 2 * time.Minute
)

// Options configure a Queue. Exactly one of Dir and URL is set.
type Options struct {
	// Dir embeds nats-server in this process with its JetStream file store
	// under Dir, reachable only in-process.
	Dir string
	// URL is an external NATS server or cluster (nats://, tls://).
	URL string
	// CredentialsFile is a NATS .creds file (JWT and NKey seed).
	CredentialsFile string
	// User and Password authenticate with user and password.
	User, Password string
	// CAFile holds the authorities that sign the servers' certificates.
	CAFile string
	// Stream names the queue stream (default MAILFLEET); its subjects use
	// the name in lower case.
	Stream string
	// Replicas of the streams the relay creates (default 1 embedded, 3
	// external).
	Replicas int
	// AckWait is how long a delivery may go without Touch before the
	// message is handed to another worker (default 1 min).
	AckWait time.Duration
	// MaxAckPending bounds the messages being delivered across the fleet
	// (default 10,000); each pod bounds its own with its worker count.
	MaxAckPending int
	// BodyMaxAge is how long body parts are kept at most (default 14 days).
	BodyMaxAge time.Duration
	// MetricsInterval is how often queue depth and age are read (default 5 s).
	MetricsInterval time.Duration
	// Registerer receives the queue's metrics; nil registers nothing.
	Registerer prometheus.Registerer
	Log        *slog.Logger

	// splitEvery is defaultSplitEvery but in tests.
	splitEvery time.Duration
}

// Queue is the JetStream queue. It is a spool.Spool and a spool.Consumer.
type Queue struct {
	opts     Options
	log      *slog.Logger
	srv      *server.Server // nil for an external server
	unlock   func() error
	nc       *nats.Conn
	js       jetstream.JetStream
	stream   jetstream.Stream
	bodies   jetstream.Stream
	deliver  jetstream.Consumer
	split    jetstream.Consumer
	metrics  *metrics
	handed   *handedOut // nil for an external server
	fin      *finished  // nil for an external server
	partSize int
	packMax  int

	subjIn, subjHeld, subjQ, subjSched, subjBody, subjSplit string
	// marked: the stream was made by a release that holds large records
	// (see heldPacksKey); hold: it still says so, so large records are
	// held in their packs and referenced (see heldMin).
	marked bool
	hold   atomic.Bool
	packs  *packCache
	// marks are reap's, for the held packs (see heldMark).
	marks []heldMark
	// lastSplit is when splitLoop last started a split (see splitFew).
	lastSplit time.Time

	commits chan *commitReq
	// committerDone is closed when commitLoop has returned: a commit
	// still waiting then has its answer already, or never gets one.
	committerDone chan struct{}
	// purgedTo is, per subject, the ack floor up to which reap purged.
	purgedTo map[string]uint64
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

var (
	_ spool.Spool    = (*Queue)(nil)
	_ spool.Consumer = (*Queue)(nil)
)

// Open connects (or starts the embedded server), creates or updates the
// streams and consumers, and starts the committer and the splitter.
func Open(ctx context.Context, o Options) (*Queue, error) {
	if (o.Dir == "") == (o.URL == "") {
		return nil, errors.New("queue: set exactly one of an embedded directory and a NATS URL")
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Stream == "" {
		o.Stream = wire.DefaultStream
	}
	if o.Replicas == 0 {
		o.Replicas = 1
		if o.URL != "" {
			o.Replicas = DefaultExternalReplicas
		}
	}
	if o.AckWait == 0 {
		o.AckWait = DefaultAckWait
	}
	if o.MaxAckPending == 0 {
		o.MaxAckPending = DefaultMaxAckPending
	}
	if o.BodyMaxAge == 0 {
		o.BodyMaxAge = DefaultBodyMaxAge
	}
	if o.MetricsInterval == 0 {
		o.MetricsInterval = 5 * time.Second
	}
	if o.splitEvery == 0 {
		o.splitEvery = defaultSplitEvery
	}
	q := &Queue{opts: o, log: o.Log.With("stream", o.Stream), commits: make(chan *commitReq, 1024),
		committerDone: make(chan struct{}), purgedTo: map[string]uint64{}, packs: newPackCache(packCacheBytes)}
	subj := wire.SubjectsOf(o.Stream)
	q.subjIn, q.subjQ, q.subjSched, q.subjBody, q.subjSplit = subj.In, subj.Queue, subj.Sched, subj.Body, subj.Split
	// Under split.>, a subject every queue stream has had: a relay of an
	// earlier release that updates the stream keeps it (see heldPacksKey).
	q.subjHeld = q.subjSplit + ".held"
	if err := q.connect(); err != nil {
		return nil, errors.Join(err, q.closeConn())
	}
	if err := q.setup(ctx); err != nil {
		return nil, errors.Join(err, q.closeConn())
	}
	if err := q.openHandedOut(ctx); err != nil {
		return nil, errors.Join(err, q.closeConn())
	}
	q.metrics = newMetrics(o.Registerer)
	q.ctx, q.cancel = context.WithCancel(context.Background())
	q.wg.Add(4)
	go func() { defer q.wg.Done(); q.reapLoop() }()
	go func() { defer q.wg.Done(); defer close(q.committerDone); q.commitLoop() }()
	go func() { defer q.wg.Done(); q.splitLoop() }()
	go func() { defer q.wg.Done(); q.metricsLoop() }()
	return q, nil
}

func (q *Queue) connect() error {
	o := q.opts
	name := nats.Name("mailfleet-relay")
	if o.Dir != "" {
		srv, unlock, err := startEmbedded(o.Dir)
		if err != nil {
			return err
		}
		q.srv, q.unlock = srv, unlock
		nc, err := nats.Connect("", nats.InProcessServer(srv), name)
		if err != nil {
			return fmt.Errorf("connect to the embedded NATS server: %w", err)
		}
		q.nc = nc
	} else {
		opts := []nats.Option{name, nats.MaxReconnects(-1), nats.RetryOnFailedConnect(false)}
		if o.CredentialsFile != "" {
			opts = append(opts, nats.UserCredentials(o.CredentialsFile))
		}
		if o.User != "" {
			opts = append(opts, nats.UserInfo(o.User, o.Password))
		}
		if o.CAFile != "" {
			pem, err := os.ReadFile(o.CAFile)
			if err != nil {
				return fmt.Errorf("read NATS CA file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return fmt.Errorf("NATS CA file %s holds no certificate", o.CAFile)
			}
			opts = append(opts, nats.Secure(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}))
		}
		opts = append(opts, nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			q.log.Warn("disconnected from NATS", "err", err)
		}), nats.ReconnectHandler(func(nc *nats.Conn) {
			q.log.Info("reconnected to NATS", "server", nc.ConnectedUrlRedacted())
		}))
		nc, err := nats.Connect(o.URL, opts...)
		if err != nil {
			return fmt.Errorf("connect to NATS at %s: %w", redactURL(o.URL), err)
		}
		q.nc = nc
	}
	js, err := jetstream.New(q.nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	q.js = js
	// A part and its headers must fit the server's max_payload, and so must
	// a pack holding one inline message with its envelope.
	q.partSize = min(maxPartSize, int(q.nc.MaxPayload())/2)
	q.packMax = int(q.nc.MaxPayload()) - 4<<10
	return nil
}

// setup creates or updates the streams and consumers; several relay pods
// doing it at once agree, since they ask for the same configuration.
func (q *Queue) setup(ctx context.Context) error {
	o := q.opts
	var err error
	retention, marked, err := q.existing(ctx)
	if err != nil {
		return err
	}
	q.marked = marked
	var metadata map[string]string
	if marked {
		metadata = map[string]string{heldPacksKey: "1"}
	}
	q.stream, err = q.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:               o.Stream,
		Description:        "mailfleet: accepted messages waiting for delivery",
		Subjects:           []string{q.subjIn, q.subjQ, q.subjSched + ".>", q.subjSplit + ".>"},
		Retention:          retention,
		Storage:            jetstream.FileStorage,
		Replicas:           o.Replicas,
		Duplicates:         duplicateWindow,
		AllowAtomicPublish: true,
		AllowDirect:        true,
		AllowMsgSchedules:  true,
		AllowMsgTTL:        true,
		Metadata:           metadata,
	})
	if err != nil {
		return fmt.Errorf("create or update stream %s: %w", o.Stream, err)
	}
	q.hold.Store(marked)
	q.bodies, err = q.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        wire.BodyStream(o.Stream),
		Description: "mailfleet: bodies of large queued messages, in parts",
		Subjects:    []string{q.subjBody + ".>"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    o.Replicas,
		MaxAge:      o.BodyMaxAge,
	})
	if err != nil {
		return fmt.Errorf("create or update stream %s_BODY: %w", o.Stream, err)
	}
	consumer := func(name string, subjects ...string) (jetstream.Consumer, error) {
		cfg := jetstream.ConsumerConfig{
			Durable:       name,
			FilterSubject: subjects[0],
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       o.AckWait,
			MaxAckPending: o.MaxAckPending,
			MaxDeliver:    -1,
			Replicas:      o.Replicas,
		}
		if len(subjects) > 1 {
			cfg.FilterSubject, cfg.FilterSubjects = "", subjects
		}
		c, err := q.stream.CreateOrUpdateConsumer(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("create or update consumer %s: %w", name, err)
		}
		return c, nil
	}
	if q.deliver, err = consumer(o.Stream+"_deliver", q.subjQ); err != nil {
		return err
	}
	if !marked {
		q.split, err = consumer(o.Stream+olderSplitConsumer, q.subjIn)
		return err
	}
	q.split, err = consumer(o.Stream+packsConsumer, q.subjIn, q.subjHeld)
	return err
}

// existing reads what the queue stream already is: its retention, limits
// (acknowledged messages are purged by reap, see there) or work-queue for a
// stream an older relay made, which the server will not change; and
// whether it holds large records (see heldPacksKey), which a stream made
// now does.
func (q *Queue) existing(ctx context.Context) (jetstream.RetentionPolicy, bool, error) {
	s, err := q.js.Stream(ctx, q.opts.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return jetstream.LimitsPolicy, true, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("read stream %s: %w", q.opts.Stream, err)
	}
	cfg := s.CachedInfo().Config
	r := cfg.Retention
	if r == jetstream.WorkQueuePolicy {
		q.log.Warn("the queue stream has work-queue retention (made by an older relay): every delivered message costs a disk sync, " +
			"which caps delivery; to lift it, drain the queue and delete the stream, and the relay makes a new one")
	}
	return r, cfg.Metadata[heldPacksKey] == "1", nil
}

// openHandedOut reads what an earlier process of an embedded queue handed
// out (see handedOut).
func (q *Queue) openHandedOut(ctx context.Context) error {
	if q.opts.Dir == "" {
		return nil
	}
	info, err := q.stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("read stream %s: %w", q.opts.Stream, err)
	}
	q.handed, err = openHandedOut(filepath.Join(q.opts.Dir, handedOutFile), info.State.LastSeq)
	if err != nil {
		return err
	}
	q.fin, err = openFinished(filepath.Join(q.opts.Dir, finishedFile))
	return err
}

// Ready reports whether the queue can take messages: its connection to
// NATS is up. A relay that is not ready gets no new sessions from its
// Service, rather than answering them all with 451.
func (q *Queue) Ready() bool {
	return q.nc != nil && q.nc.IsConnected()
}

// Conn is the queue's NATS connection, which the events producer shares:
// the embedded server is reachable only through it.
func (q *Queue) Conn() *nats.Conn { return q.nc }

// Stream is the queue stream's name, and Replicas how many copies the
// streams the relay creates keep; the events stream is made beside it.
func (q *Queue) Stream() string { return q.opts.Stream }

// Replicas: see Stream.
func (q *Queue) Replicas() int { return q.opts.Replicas }

// Close stops the committer and the splitter, then closes the connection
// and the embedded server. Commits still waiting fail.
func (q *Queue) Close() error {
	if q.cancel != nil {
		q.cancel()
		q.wg.Wait()
	}
	return q.closeConn()
}

func (q *Queue) closeConn() error {
	if q.nc != nil {
		q.nc.Close()
	}
	err := errors.Join(q.handed.close(), q.fin.close())
	if q.srv != nil {
		q.srv.Shutdown()
		q.srv.WaitForShutdown()
	}
	if q.unlock != nil {
		err = errors.Join(err, q.unlock())
	}
	return err
}

// redactURL drops user information from a NATS URL before it is logged.
func redactURL(u string) string {
	if at := strings.LastIndex(u, "@"); at >= 0 {
		if scheme := strings.Index(u, "://"); scheme >= 0 && scheme < at {
			return u[:scheme+3] + "[redacted]" + u[at:]
		}
		return "[redacted]" + u[at:]
	}
	return u
}
