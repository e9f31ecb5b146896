package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// requestCounts is apiserver_request_total summed by "VERB resource[/subresource]".
type requestCounts map[string]float64

// apiRequests reads the API server's request counters from /metrics.
func apiRequests(ctx context.Context, c *cluster) (requestCounts, error) {
	raw, err := c.clientset.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("read API server metrics: %w", err)
	}
	return sumCounter(bytes.NewReader(raw), "apiserver_request_total", func(l map[string]string) string {
		key := l["verb"] + " " + l["resource"]
		if l["subresource"] != "" {
			key += "/" + l["subresource"]
		}
		return key
	})
}

// sumCounter sums a counter of a Prometheus text exposition by the key its
// labels give.
func sumCounter(r io.Reader, name string, key func(labels map[string]string) string) (requestCounts, error) {
	out := requestCounts{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), name+"{")
		if !ok {
			continue
		}
		labels, value, ok := strings.Cut(line, "} ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil || v == 0 {
			continue
		}
		out[key(parseLabels(labels))] += v
	}
	return out, sc.Err()
}

// eventsByReason counts the cluster's Events by type and reason.
func eventsByReason(ctx context.Context, c *cluster) (requestCounts, error) {
	list, err := c.clientset.EventsV1().Events(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list Events: %w", err)
	}
	out := requestCounts{}
	for _, e := range list.Items {
		out[e.Type+" "+e.Reason]++
	}
	return out, nil
}

// parseLabels reads name="value" pairs; the values apiserver_request_total
// carries hold no commas or quotes.
func parseLabels(s string) map[string]string {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if ok {
			out[k] = strings.Trim(v, `"`)
		}
	}
	return out
}

// minus is the requests counted since before.
func (r requestCounts) minus(before requestCounts) requestCounts {
	out := requestCounts{}
	for k, v := range r {
		if d := v - before[k]; d > 0 {
			out[k] = d
		}
	}
	return out
}

func (r requestCounts) total() float64 {
	t := 0.0
	for _, v := range r {
		t += v
	}
	return t
}

// top returns the n largest counters, largest first.
func (r requestCounts) top(n int) []string {
	keys := slices.Collect(maps.Keys(r))
	slices.SortFunc(keys, func(a, b string) int {
		if r[a] != r[b] {
			if r[a] > r[b] {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b)
	})
	return keys[:min(n, len(keys))]
}

// summary lists every counter, largest first, on one line; with accounts
// > 0 each is also given per account.
func (r requestCounts) summary(accounts int) string {
	var b strings.Builder
	for i, k := range r.top(len(r)) {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %.0f", k, r[k])
		if accounts > 0 {
			fmt.Fprintf(&b, " (%.2f/account)", r[k]/float64(accounts))
		}
	}
	return b.String()
}
