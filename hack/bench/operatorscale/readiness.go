package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
)

// readiness follows, through a watch, how many objects of a mailfleet
// resource are Ready for their current generation (the rule the operator
// itself applies), and when the last of want became so.
//
// Listing the objects instead, every second near the end, made the API
// server encode 30,000 objects a second for the benchmark alone: more of
// its CPU than the operator's writes took, and none of it in the floor. A
// watch costs it one more copy of each event it encodes anyway for the
// operator's own watch.
type readiness struct {
	resource string
	want     int

	mu    sync.Mutex
	ready map[string]bool // by namespace/name
	n     int
	at    time.Time     // when n reached want
	done  chan struct{} // closed then
}

// readinessItem is the part of an object the count reads; decoding only
// these fields keeps the benchmark's own CPU use small next to the
// operator's and the API server's on the same machine.
type readinessItem struct {
	Metadata struct {
		Namespace       string `json:"namespace"`
		Name            string `json:"name"`
		Generation      int64  `json:"generation"`
		ResourceVersion string `json:"resourceVersion"`
	} `json:"metadata"`
	Status struct {
		Conditions []struct {
			Type               string `json:"type"`
			Status             string `json:"status"`
			ObservedGeneration int64  `json:"observedGeneration"`
		} `json:"conditions"`
	} `json:"status"`
}

func (it *readinessItem) isReady() bool {
	for _, c := range it.Status.Conditions {
		if c.Type == v1.ConditionReady && c.Status == string(metav1.ConditionTrue) && c.ObservedGeneration == it.Metadata.Generation {
			return true
		}
	}
	return false
}

// watchReadiness starts following resource; it stops when ctx ends. It
// returns once the watch is established, so that no object created after
// it returns is missed.
func watchReadiness(ctx context.Context, c *cluster, resource string, want int) (*readiness, error) {
	r := &readiness{resource: resource, want: want, ready: map[string]bool{}, done: make(chan struct{})}
	if want == 0 {
		r.at = time.Now()
		close(r.done)
		return r, nil
	}
	stream, err := r.open(ctx, c, "")
	if err != nil {
		return nil, err
	}
	go r.follow(ctx, c, stream)
	return r, nil
}

// open starts a watch from resourceVersion rv ("": with every object that
// exists as it starts).
func (r *readiness) open(ctx context.Context, c *cluster, rv string) (io.ReadCloser, error) {
	req := c.clientset.CoreV1().RESTClient().Get().
		AbsPath("/apis", v1.GroupVersion.Group, v1.GroupVersion.Version, r.resource).
		Param("watch", "true").Param("allowWatchBookmarks", "true")
	if rv != "" {
		req = req.Param("resourceVersion", rv)
	}
	benchRequests.add("WATCH " + r.resource)
	stream, err := req.Stream(ctx)
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", r.resource, err)
	}
	return stream, nil
}

// follow reads the watch until ctx ends, watching again from where it was
// when the API server closes it.
func (r *readiness) follow(ctx context.Context, c *cluster, stream io.ReadCloser) {
	rv := ""
	for {
		var gone bool
		rv, gone = r.read(stream, rv)
		stream.Close()
		if gone {
			rv = "" // too old to resume: every object again
		}
		for {
			if ctx.Err() != nil {
				return
			}
			var err error
			if stream, err = r.open(ctx, c, rv); err == nil {
				break
			}
			time.Sleep(time.Second)
		}
	}
}

// read applies the events of one watch and returns the last resourceVersion
// seen, and whether the API server said it is too old to watch from.
func (r *readiness) read(stream io.Reader, rv string) (string, bool) {
	dec := json.NewDecoder(stream)
	for {
		var ev struct {
			Type   string          `json:"type"`
			Object json.RawMessage `json:"object"`
		}
		if err := dec.Decode(&ev); err != nil {
			return rv, false
		}
		if ev.Type == "ERROR" {
			var st metav1.Status
			if json.Unmarshal(ev.Object, &st) == nil && st.Code == http.StatusGone {
				return rv, true
			}
			return rv, false
		}
		var it readinessItem
		if err := json.Unmarshal(ev.Object, &it); err != nil {
			continue
		}
		rv = it.Metadata.ResourceVersion
		if ev.Type != "BOOKMARK" {
			r.observe(it.Metadata.Namespace+"/"+it.Metadata.Name, ev.Type != "DELETED" && it.isReady())
		}
	}
}

func (r *readiness) observe(key string, ready bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ready[key] == ready {
		return
	}
	r.ready[key] = ready
	if ready {
		r.n++
	} else {
		r.n--
	}
	if r.n == r.want && r.at.IsZero() {
		r.at = time.Now()
		close(r.done)
	}
}

// count is how many objects are Ready now.
func (r *readiness) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}

// readyAt is when the last of want objects became Ready; an error before.
func (r *readiness) readyAt() (time.Time, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.at.IsZero() {
		return time.Time{}, errors.New(r.resource + " not all Ready")
	}
	return r.at, nil
}
