package queue

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go/jetstream"
)

// The queue stream allows direct gets, which any replica answers, so that
// reading a held pack costs what delivering a message costs (the JSON API
// would carry the pack base64-encoded, decoded at both ends). A replica
// behind its leader may not hold a message yet, so whatever must not be
// read stale — whether a pack is gone, the last message on a subject, a
// split marker — asks the leader instead. jetstream.Stream's own reads
// would go direct once the stream allows it; these do not.

// directGet reads the message at seq from any replica; found is false when
// the replica that answered does not hold it.
func (q *Queue) directGet(ctx context.Context, seq uint64) (subject string, data []byte, found bool, err error) {
	req := []byte(`{"seq":` + strconv.FormatUint(seq, 10) + `}`)
	resp, err := q.nc.RequestWithContext(ctx, jetstream.DefaultAPIPrefix+"DIRECT.GET."+q.opts.Stream, req)
	if err != nil {
		return "", nil, false, fmt.Errorf("direct get of %d: %w", seq, err)
	}
	if status := resp.Header.Get("Status"); status != "" && len(resp.Data) == 0 {
		if status == "404" {
			return "", nil, false, nil
		}
		return "", nil, false, fmt.Errorf("direct get of %d: status %s %s", seq, status, resp.Header.Get("Description"))
	}
	if got := resp.Header.Get(jetstream.SequenceHeader); got != strconv.FormatUint(seq, 10) {
		return "", nil, false, fmt.Errorf("direct get of %d: answered with sequence %q", seq, got)
	}
	return resp.Header.Get(jetstream.SubjectHeader), resp.Data, true, nil
}

// leaderGet asks the stream's leader for the message at seq, or for the
// last one on lastFor when it is set; found is false when there is none.
func (q *Queue) leaderGet(ctx context.Context, seq uint64, lastFor string) (m storedMsg, found bool, err error) {
	req, err := json.Marshal(struct {
		Seq     uint64 `json:"seq,omitempty"`
		LastFor string `json:"last_by_subj,omitempty"`
	}{seq, lastFor})
	if err != nil {
		return m, false, err
	}
	raw, err := q.nc.RequestWithContext(ctx, jetstream.DefaultAPIPrefix+"STREAM.MSG.GET."+q.opts.Stream, req)
	if err != nil {
		return m, false, fmt.Errorf("get message: %w", err)
	}
	var resp struct {
		Message *storedMsg `json:"message"`
		Error   *struct {
			Code        int    `json:"code"`
			ErrCode     int    `json:"err_code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(raw.Data, &resp); err != nil {
		return m, false, fmt.Errorf("get message: reply %q: %w", raw.Data, err)
	}
	switch {
	case resp.Error != nil && resp.Error.ErrCode == int(jetstream.JSErrCodeMessageNotFound):
		return m, false, nil
	case resp.Error != nil:
		return m, false, fmt.Errorf("get message: %s (%d)", resp.Error.Description, resp.Error.ErrCode)
	case resp.Message == nil:
		return m, false, fmt.Errorf("get message: reply without a message")
	}
	return *resp.Message, true, nil
}

// storedMsg is a message as the leader returns it.
type storedMsg struct {
	Subject string `json:"subject"`
	Seq     uint64 `json:"seq"`
	Data    []byte `json:"data"`
}
