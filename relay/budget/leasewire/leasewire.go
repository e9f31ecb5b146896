// Package leasewire is the lease protocol between the relay (budget.Leased)
// and its rate-limit sidecar (mailfleet ratelimit): a second gRPC service on
// the sidecar's server, next to Envoy's rate limit service.
//
// A lease is a block of one account's budget for one counting window, taken
// from the same Redis counter that ShouldRateLimit counts in, so the relay
// can decide messages from it without a round trip while gateways keep
// asking ShouldRateLimit, and both draw on one budget. Take grants blocks;
// Return gives back what a holder did not use.
//
// The messages are Go structs carried as JSON (the codec registered here,
// content subtype CodecName) rather than generated protobuf: the service is
// the project's own, spoken only between a relay and the sidecar in its pod
// built from the same image, and two small hand-written messages are easier
// to read and change than a .proto and its generated code. It lives under
// relay/ because the relay may not import ratelimit/; the sidecar imports it.
package leasewire

import (
	"context"
	"encoding/json"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
)

// ServiceName is the gRPC service; its methods are Take and Return.
const ServiceName = "mailfleet.ratelimit.v1.Leases"

// Full method names, as gRPC routes them.
const (
	TakeMethod   = "/" + ServiceName + "/Take"
	ReturnMethod = "/" + ServiceName + "/Return"
)

// MaxItems bounds the leases in one call: a caller splits larger batches.
const MaxItems = 512

// TakeRequest asks for leases on behalf of one holder.
type TakeRequest struct {
	// Holder names the relay process. The sidecar remembers how much each
	// holder took of each account's window, so a return can never give
	// back more than its holder took.
	Holder string `json:"holder"`
	Asks   []Ask  `json:"asks"`
}

// Ask is one account's lease request.
type Ask struct {
	APIUser string `json:"apiUser"`
	// Limit is the account's budget per window (per minute), as in a
	// ShouldRateLimit limit override.
	Limit int64 `json:"limit"`
	// Want is the block the holder would like.
	Want int64 `json:"want"`
	// Need is the least that is of use (the message being decided): when
	// fewer units are left the grant is 0 and nothing is taken. 0 for a
	// lease taken ahead of need.
	Need int64 `json:"need,omitempty"`
	// Next asks for the window after the current one, so a relay can hold
	// a lease before that window starts.
	Next bool `json:"next,omitempty"`
}

// TakeReply has one Grant per Ask, in order.
type TakeReply struct {
	Grants []Grant `json:"grants"`
}

// Grant is a lease: Units of the account's budget in Window, counted as
// used until returned.
type Grant struct {
	Units int64 `json:"units"`
	// Left is what the window still had after the grant; when the grant
	// is 0 because fewer than Need were left, it is what was left.
	Left int64 `json:"left"`
	// Window numbers the window (unix seconds / window length).
	Window int64 `json:"window"`
	// StartsInMicros and EndsInMicros place the window relative to the
	// moment the counter decided (negative start: it has begun).
	StartsInMicros int64 `json:"startsInMicros"`
	EndsInMicros   int64 `json:"endsInMicros"`
	// WindowMicros is the window's length.
	WindowMicros int64 `json:"windowMicros"`
	// Fallback says Redis could not answer and the pod's fallback limiter
	// (failure mode allow) granted: such units are never returned.
	Fallback bool `json:"fallback,omitempty"`
}

// ReturnRequest gives back unused units.
type ReturnRequest struct {
	Holder string   `json:"holder"`
	Unused []Unused `json:"unused"`
}

// Unused is what a holder gives back of one account's window.
type Unused struct {
	APIUser string `json:"apiUser"`
	Window  int64  `json:"window"`
	Units   int64  `json:"units"`
}

// ReturnReply says how many units each Unused gave back: fewer than asked
// when the window has passed (0) or the holder had not taken that many.
type ReturnReply struct {
	Returned []int64 `json:"returned"`
}

// Server is the sidecar's side.
type Server interface {
	TakeLeases(ctx context.Context, req *TakeRequest) (*TakeReply, error)
	ReturnLeases(ctx context.Context, req *ReturnRequest) (*ReturnReply, error)
}

// RegisterServer puts srv on a gRPC server beside its other services.
func RegisterServer(s grpc.ServiceRegistrar, srv Server) {
	s.RegisterService(&serviceDesc, srv)
}

var serviceDesc = grpc.ServiceDesc{
	ServiceName: ServiceName,
	HandlerType: (*Server)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "Take", Handler: unary(TakeMethod, Server.TakeLeases)},
		{MethodName: "Return", Handler: unary(ReturnMethod, Server.ReturnLeases)},
	},
	Metadata: "relay/budget/leasewire",
}

// unary adapts a Server method to gRPC's handler signature, interceptors
// included, as generated code would.
func unary[Req, Reply any](method string, call func(Server, context.Context, *Req) (*Reply, error)) grpc.MethodHandler {
	return func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
		req := new(Req)
		if err := dec(req); err != nil {
			return nil, err
		}
		if interceptor == nil {
			return call(srv.(Server), ctx, req)
		}
		info := &grpc.UnaryServerInfo{Server: srv, FullMethod: method}
		return interceptor(ctx, req, info, func(ctx context.Context, req any) (any, error) {
			return call(srv.(Server), ctx, req.(*Req))
		})
	}
}

// Client calls the service over a connection.
type Client struct {
	conn grpc.ClientConnInterface
}

// NewClient speaks the lease protocol over conn.
func NewClient(conn grpc.ClientConnInterface) Client {
	return Client{conn: conn}
}

// Take asks for leases.
func (c Client) Take(ctx context.Context, req *TakeRequest) (*TakeReply, error) {
	out := new(TakeReply)
	if err := c.conn.Invoke(ctx, TakeMethod, req, out, grpc.CallContentSubtype(CodecName)); err != nil {
		return nil, err
	}
	if len(out.Grants) != len(req.Asks) {
		return nil, fmt.Errorf("lease take: %d grants for %d asks", len(out.Grants), len(req.Asks))
	}
	return out, nil
}

// Return gives back unused units.
func (c Client) Return(ctx context.Context, req *ReturnRequest) (*ReturnReply, error) {
	out := new(ReturnReply)
	if err := c.conn.Invoke(ctx, ReturnMethod, req, out, grpc.CallContentSubtype(CodecName)); err != nil {
		return nil, err
	}
	return out, nil
}

// CodecName is the content subtype of the lease service's messages
// (application/grpc+mailfleet-json).
const CodecName = "mailfleet-json"

// codec carries the messages as JSON. It is registered by name, so it
// serves only calls that ask for it; the RLS service on the same server
// keeps protobuf.
type codec struct{}

func (codec) Marshal(v any) ([]byte, error)      { return json.Marshal(v) }
func (codec) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }
func (codec) Name() string                       { return CodecName }

func init() {
	encoding.RegisterCodec(codec{})
}
