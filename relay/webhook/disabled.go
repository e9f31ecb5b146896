package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailfleet/mailfleet/api/wire"
)

// disabledSet is the webhooks an endpoint disabled (410 Gone), kept in a
// JetStream key-value bucket that every relay pod of the fleet watches:
// one pod's 410 stops the others too, and a restarted pod remembers it.
type disabledSet struct {
	kv  jetstream.KeyValue
	log *slog.Logger

	mu   sync.RWMutex
	keys map[string]Disabled
	// changed is signalled when keys changed, for the status report.
	changed chan struct{}
}

// Disabled is a disabled webhook's record in the bucket (key: the
// webhook's key). It names the account, never the URL or the secret.
type Disabled struct {
	APIUser    string    `json:"apiUser"`
	DisabledAt time.Time `json:"disabledAt"`
	Reason     string    `json:"reason"`
}

func openDisabled(ctx context.Context, js jetstream.JetStream, cfg Config, log *slog.Logger) (*disabledSet, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      wire.WebhooksBucket(cfg.QueueStream),
		Description: "mailfleet: webhooks disabled by their endpoint (410 Gone)",
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("webhook: key-value bucket: %w", err)
	}
	return &disabledSet{kv: kv, log: log, keys: map[string]Disabled{}, changed: make(chan struct{}, 1)}, nil
}

// watch keeps keys in step with the bucket until ctx ends.
func (s *disabledSet) watch(ctx context.Context) {
	for ctx.Err() == nil {
		w, err := s.kv.WatchAll(ctx)
		if err != nil {
			s.log.Warn("watch the disabled webhooks", "err", err)
			time.Sleep(time.Second)
			continue
		}
		for e := range w.Updates() {
			if e == nil {
				s.signal() // the initial values are in
				continue
			}
			s.mu.Lock()
			if e.Operation() == jetstream.KeyValuePut {
				var d Disabled
				json.Unmarshal(e.Value(), &d)
				s.keys[e.Key()] = d
			} else {
				delete(s.keys, e.Key())
			}
			s.mu.Unlock()
			s.signal()
		}
		w.Stop()
	}
}

func (s *disabledSet) signal() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

func (s *disabledSet) has(key string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, ok := s.keys[key]
	return ok
}

func (s *disabledSet) count() float64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return float64(len(s.keys))
}

// status is what the relays report of the disabled webhooks, at most
// wire.MaxReportedWebhooks of them.
func (s *disabledSet) status() wire.WebhookStatus {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := wire.WebhookStatus{Disabled: make(map[string]wire.DisabledWebhook, len(s.keys))}
	for k, d := range s.keys {
		if len(out.Disabled) == wire.MaxReportedWebhooks {
			break
		}
		out.Disabled[k] = wire.DisabledWebhook{APIUser: d.APIUser, DisabledAt: d.DisabledAt.UTC().Format(time.RFC3339), Reason: d.Reason}
	}
	return out
}

// report tells reporter what is disabled whenever it changes, a second
// apart at most once, until ctx ends; a failed report is tried again.
func (s *disabledSet) report(ctx context.Context, reporter StatusReporter) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.changed:
		}
		for delay := time.Second; ; delay = min(2*delay, time.Minute) {
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := reporter.Report(rctx, s.status())
			cancel()
			if err == nil || ctx.Err() != nil {
				break
			}
			s.log.Warn("report the disabled webhooks to the operator", "retry_in", delay, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(delay):
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

func (s *disabledSet) put(ctx context.Context, key string, d Disabled) error {
	data, _ := json.Marshal(d)
	if _, err := s.kv.Put(ctx, key, data); err != nil {
		return fmt.Errorf("record the disabled webhook: %w", err)
	}
	s.mu.Lock()
	s.keys[key] = d
	s.mu.Unlock()
	s.signal()
	return nil
}

// disable records that h's endpoint answered 410 Gone.
func (d *Dispatcher) disable(ctx context.Context, h *hook, log *slog.Logger) error {
	err := d.disabled.put(ctx, h.key, Disabled{APIUser: h.apiUser, DisabledAt: time.Now().UTC(), Reason: "410 Gone"})
	if err != nil {
		log.Error("webhook answered 410 Gone; recording it failed, it will be posted to again after a backoff", "err", err)
		return err
	}
	log.Warn("webhook disabled: its endpoint answered 410 Gone; its events wait in the stream until it is enabled again")
	return nil
}

// forgetRemoved removes the disabled marks of webhooks their accounts no
// longer have. That is the way back after a 410: take the webhook out of
// the account (spec.webhooks) and put it back once the endpoint is fixed.
// It looks at what the credentials hold, not at what changed, so a pod
// that started after the removal, or saw the webhook leave and come back
// between two looks, forgets the mark all the same once one pod of the
// fleet sees the account without it. A suspended account keeps its marks
// (its webhooks are only paused), and so does an account the credentials
// do not hold (nothing says what it has). A relay pod that still has the
// old credentials and posts meanwhile gets the endpoint's answer again,
// 410 or not.
func (d *Dispatcher) forgetRemoved(ctx context.Context) {
	present, kept := map[string]bool{}, map[string]bool{}
	for a := range d.deps.Accounts.All() {
		present[a.APIUser] = true
		for _, w := range a.Webhooks {
			kept[hookKey(a.APIUser, w.URL)] = true
		}
	}
	for key, apiUser := range d.disabled.orphans(present, kept) {
		if err := d.disabled.remove(ctx, key); err != nil {
			d.log.Warn("forget a removed webhook's disabled mark; trying again shortly", "account", apiUser, "webhook", key, "err", err)
			continue
		}
		d.log.Info("a disabled webhook was removed from its account; added again, it is posted to", "account", apiUser, "webhook", key)
	}
}

// orphans are the marks, by key with their api_user, of accounts in
// present that have no webhook of that key in kept.
func (s *disabledSet) orphans(present, kept map[string]bool) map[string]string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := map[string]string{}
	for k, d := range s.keys {
		if present[d.APIUser] && !kept[k] {
			out[k] = d.APIUser
		}
	}
	return out
}

// remove deletes a mark from the bucket (the watch of every pod then
// forgets it) and from this pod's view at once.
func (s *disabledSet) remove(ctx context.Context, key string) error {
	err := s.kv.Delete(ctx, key)
	if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("enable webhook: %w", err)
	}
	s.mu.Lock()
	delete(s.keys, key)
	s.mu.Unlock()
	s.signal()
	return nil
}

// Enable removes a webhook's disabled mark.
func (d *Dispatcher) Enable(ctx context.Context, apiUser, url string) error {
	return d.disabled.remove(ctx, hookKey(apiUser, url))
}
