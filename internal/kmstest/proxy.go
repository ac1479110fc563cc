package kmstest

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms"
)

// MaxLatency bounds the latency a Proxy may add to one request.
const MaxLatency = 5 * time.Second

// DefaultCaller is the principal a Proxy's permission mode names in its
// AccessDeniedException text when Permissions.Caller is empty: a role
// session in the emulator's account.
const DefaultCaller = "arn:aws:sts::" + Account + ":assumed-role/kmsfs-test/session"

const maxRequestBody = 1 << 20 // far above any KMS request

// Proxy is a loopback HTTP proxy in front of the emulator that makes it
// answer like AWS KMS under trouble. It can delay every request by a fixed
// latency; answer requests with a KMS exception (Inject, FailNext), with
// the HTTP status and message text AWS KMS uses for it; refuse operations
// a key policy would not allow (SetPermissions); and rewrite DescribeKey
// answers to report a state or custom key store the emulator cannot
// (RewriteDescribeKey). Point a client at URL. A Proxy is safe for
// concurrent use; it closes when its test ends, cutting any delayed
// request short.
type Proxy struct {
	URL string // "http://127.0.0.1:PORT"

	target string // the emulator's endpoint

	mu        sync.Mutex
	latency   time.Duration
	fault     Fault
	seen      int // requests the current fault has counted
	failed    int
	perms     *Permissions
	publicKey PublicKeyRewrite
	describe  KeyMetadataRewrite
	requests  map[string]int    // by operation, forwarded or not
	last      map[string][]byte // last request body, by operation
	// rsaReEncrypt, when set, answers ReEncrypt with RSA keys through
	// the emulator's Decrypt and GetPublicKey (EmulateRSAReEncrypt).
	rsaReEncrypt *kms.Client
}

// Fault is an exception a Proxy answers instead of forwarding: N of the
// next M requests (for operations Ops, or all operations when Ops is
// empty), spread evenly and starting with the first, answer Code.
type Fault struct {
	// Code is the KMS error code ("ThrottlingException", …).
	Code string
	// Status is the HTTP status; 0 means the one AWS KMS answers Code
	// with (ErrorStatus).
	Status int
	// Message is the error text; "" means the one AWS KMS answers Code
	// with (ErrorMessage), naming the request's key and operation.
	Message string
	// N requests of the next M fail; M 0 (or below N) means N: the next
	// N requests fail.
	N, M int
	// Ops, when not empty, limits the fault to these operations
	// ("Decrypt", …); other requests pass and are not counted.
	Ops []string
}

// Permissions is a key policy in miniature: only the operations in Allow
// are allowed; any other is answered with AccessDeniedException naming
// Caller, as AWS KMS answers a caller that no policy allows.
type Permissions struct {
	// Caller is the principal ARN the denial names; "" means
	// DefaultCaller.
	Caller string
	// Allow lists the allowed operations ("GenerateDataKey", "Decrypt", …).
	Allow []string
}

// KeyMetadataRewrite changes what DescribeKey answers: each field that is
// set replaces the emulator's. The zero value rewrites nothing.
type KeyMetadataRewrite struct {
	// KeyState such as "Updating", "Unavailable", "PendingDeletion".
	KeyState string
	// CustomKeyStoreID puts the key in a custom key store (cks-…).
	CustomKeyStoreID string
	// DeletionDate is reported with a PendingDeletion state.
	DeletionDate time.Time
}

// PublicKeyRewrite changes what GetPublicKey answers: each field that is
// set replaces the emulator's. The zero value rewrites nothing.
type PublicKeyRewrite struct {
	// KeyUsage such as "SIGN_VERIFY".
	KeyUsage string
	// KeySpec such as "ECC_NIST_P256".
	KeySpec string
	// EncryptionAlgorithms such as ["RSAES_OAEP_SHA_1"].
	EncryptionAlgorithms []string
}

// kmsErrors holds the HTTP status and message text AWS KMS answers each
// exception with, following the Errors sections of the KMS API reference
// and the common errors of AWS APIs. {key}, {op} and {caller} stand for
// the key the request names, its operation and the calling principal.
var kmsErrors = map[string]struct {
	status int
	msg    string
}{
	"AccessDeniedException": {http.StatusBadRequest, "User: {caller} is not authorized to perform: kms:{op} on resource: {key} " +
		"because no resource-based policy allows the kms:{op} action"},
	"ThrottlingException":         {http.StatusBadRequest, "Rate exceeded"},
	"LimitExceededException":      {http.StatusBadRequest, "Rate exceeded"},
	"DisabledException":           {http.StatusConflict, "{key} is disabled."},
	"KMSInvalidStateException":    {http.StatusConflict, "{key} is pending deletion."},
	"KeyUnavailableException":     {http.StatusInternalServerError, "{key} is unavailable."},
	"DependencyTimeoutException":  {http.StatusInternalServerError, "The system timed out while trying to fulfill the request."},
	"KMSInternalException":        {http.StatusInternalServerError, "An internal error occurred."},
	"NotFoundException":           {http.StatusBadRequest, "Key '{key}' does not exist"},
	"InvalidCiphertextException":  {http.StatusBadRequest, ""},
	"IncorrectKeyException":       {http.StatusBadRequest, "The key ID in the request does not identify a CMK that can perform this operation."},
	"InvalidGrantTokenException":  {http.StatusBadRequest, "Grant token provided is invalid."},
	"InvalidKeyUsageException":    {http.StatusBadRequest, "{key} key usage is not valid for {op}."},
	"ExpiredTokenException":       {http.StatusBadRequest, "The security token included in the request is expired"},
	"UnrecognizedClientException": {http.StatusBadRequest, "The security token included in the request is invalid."},
}

// ErrorStatus returns the HTTP status AWS KMS answers the error code with
// (400 for codes it does not know).
func ErrorStatus(code string) int {
	if e, ok := kmsErrors[code]; ok {
		return e.status
	}
	return http.StatusBadRequest
}

// ErrorMessage returns the text AWS KMS answers the error code with for a
// request of op naming key from caller.
func ErrorMessage(code, op, key, caller string) string {
	e, ok := kmsErrors[code]
	if !ok {
		return "injected by kmstest.Proxy"
	}
	return strings.NewReplacer("{key}", key, "{op}", op, "{caller}", caller).Replace(e.msg)
}

// NewProxy starts a proxy on 127.0.0.1 forwarding to target (an emulator's
// Endpoint) and registers its shutdown with t.Cleanup.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatalf("kmstest: proxy target: %v", err)
	}
	p := &Proxy{target: target, requests: map[string]int{}, last: map[string][]byte{}}
	transport := &http.Transport{MaxIdleConnsPerHost: 64} // its own pool, closed with the proxy
	rp := &httputil.ReverseProxy{
		Rewrite:        func(r *httputil.ProxyRequest) { r.SetURL(u) },
		Transport:      transport,
		ModifyResponse: p.rewriteResponse,
		// A client that gave up (a test's deadline) is no news: answer
		// 502 without logging.
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, _ error) { w.WriteHeader(http.StatusBadGateway) },
	}
	closing := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Read the body first: only then does the server watch the
		// connection, and cancel r's context when the client gives up.
		reqBody, err := io.ReadAll(io.LimitReader(r.Body, maxRequestBody))
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(reqBody))
		op := operation(r)
		delay, status, code, msg := p.next(op, reqBody)
		if delay > 0 {
			timer := time.NewTimer(delay)
			select {
			case <-timer.C:
			case <-r.Context().Done():
				timer.Stop()
				return
			case <-closing:
				timer.Stop()
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
		}
		if code != "" {
			b, _ := json.Marshal(map[string]string{"__type": code, "message": msg})
			w.Header().Set("Content-Type", "application/x-amz-json-1.1")
			w.WriteHeader(status)
			w.Write(b)
			return
		}
		if p.emulatedReEncrypt(w, r, op, reqBody) {
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		close(closing) // cut delayed requests short
		srv.Close()
		transport.CloseIdleConnections()
	})
	p.URL = srv.URL
	return p
}

// operation returns the KMS operation a request names in X-Amz-Target
// ("TrentService.Decrypt" -> "Decrypt").
func operation(r *http.Request) string {
	t := r.Header.Get("X-Amz-Target")
	if i := strings.LastIndexByte(t, '.'); i >= 0 {
		return t[i+1:]
	}
	return t
}

// requestKey returns the key a request body names, or "" if none.
func requestKey(body []byte) string {
	var in struct{ KeyId string }
	if json.Unmarshal(body, &in) != nil {
		return ""
	}
	return in.KeyId
}

// next records a request and says how long to delay it and which error, if
// any, to answer with: a permission denial, else the pending fault.
func (p *Proxy) next(op string, body []byte) (delay time.Duration, status int, code, msg string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.requests[op]++
	p.last[op] = body
	var f Fault
	var fail bool
	caller := DefaultCaller
	if p.perms != nil && !slices.Contains(p.perms.Allow, op) {
		f, fail = Fault{Code: "AccessDeniedException"}, true
		caller = cmp.Or(p.perms.Caller, DefaultCaller)
	} else {
		f, fail = p.fire(op)
	}
	if !fail {
		return p.latency, 0, "", ""
	}
	p.failed++
	status = cmp.Or(f.Status, ErrorStatus(f.Code))
	msg = cmp.Or(f.Message, ErrorMessage(f.Code, op, requestKey(body), caller))
	return p.latency, status, f.Code, msg
}

// fire counts a request for op against the pending fault and returns the
// fault and whether this request fails. p.mu must be held.
func (p *Proxy) fire(op string) (Fault, bool) {
	f := p.fault // a copy: the window may end below
	if f.N <= 0 || (len(f.Ops) > 0 && !slices.Contains(f.Ops, op)) {
		return f, false
	}
	// Request i of the window fails when the spread count of failures
	// steps up at i: ceil((i+1)N/M) > ceil(iN/M), so the first fails.
	m := max(f.M, f.N)
	i := p.seen
	p.seen++
	if p.seen >= m {
		p.fault, p.seen = Fault{}, 0
	}
	return f, ((i+1)*f.N+m-1)/m > (i*f.N+m-1)/m
}

// rewriteResponse applies the DescribeKey and GetPublicKey rewrites to an
// answer of the emulator.
func (p *Proxy) rewriteResponse(resp *http.Response) error {
	p.mu.Lock()
	md, pk := p.describe, p.publicKey
	p.mu.Unlock()
	if resp.StatusCode != http.StatusOK {
		return nil
	}
	switch operation(resp.Request) {
	case "GetPublicKey":
		if pk.KeyUsage != "" || pk.KeySpec != "" || pk.EncryptionAlgorithms != nil {
			return rewriteJSON(resp, pk.apply)
		}
	case "DescribeKey":
		if md != (KeyMetadataRewrite{}) {
			return rewriteJSON(resp, md.apply)
		}
	}
	return nil
}

// apply sets rw's fields in a GetPublicKey answer.
func (rw PublicKeyRewrite) apply(out map[string]any) {
	if rw.KeyUsage != "" {
		out["KeyUsage"] = rw.KeyUsage
	}
	if rw.KeySpec != "" {
		out["KeySpec"] = rw.KeySpec
	}
	if rw.EncryptionAlgorithms != nil {
		out["EncryptionAlgorithms"] = rw.EncryptionAlgorithms
	}
}

// apply sets rw's fields in the KeyMetadata of a DescribeKey answer.
func (rw KeyMetadataRewrite) apply(out map[string]any) {
	md, _ := out["KeyMetadata"].(map[string]any)
	if md == nil {
		return
	}
	if rw.KeyState != "" {
		md["KeyState"] = rw.KeyState
		md["Enabled"] = rw.KeyState == "Enabled" || rw.KeyState == "Updating"
	}
	if rw.CustomKeyStoreID != "" {
		md["CustomKeyStoreId"] = rw.CustomKeyStoreID
		md["Origin"] = "AWS_CLOUDHSM"
	}
	if !rw.DeletionDate.IsZero() {
		md["DeletionDate"] = float64(rw.DeletionDate.Unix())
	}
}

// rewriteJSON replaces resp's JSON body with edit's change of it.
func rewriteJSON(resp *http.Response, edit func(map[string]any)) error {
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxRequestBody))
	resp.Body.Close()
	if err != nil {
		return err
	}
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		return fmt.Errorf("kmstest: %s answer: %w", operation(resp.Request), err)
	}
	edit(out)
	if b, err = json.Marshal(out); err != nil {
		return err
	}
	resp.Body = io.NopCloser(bytes.NewReader(b))
	resp.ContentLength = int64(len(b))
	resp.Header.Set("Content-Length", strconv.Itoa(len(b)))
	return nil
}

// SetLatency makes every later request wait d before it is answered.
// It panics if d is negative or above MaxLatency.
func (p *Proxy) SetLatency(d time.Duration) {
	if d < 0 || d > MaxLatency {
		panic(fmt.Sprintf("kmstest: proxy latency %v outside [0, %v]", d, MaxLatency))
	}
	p.mu.Lock()
	p.latency = d
	p.mu.Unlock()
}

// Inject replaces the pending fault with f; a zero Fault (or N 0) clears
// it.
func (p *Proxy) Inject(f Fault) {
	p.mu.Lock()
	p.fault, p.seen = f, 0
	p.mu.Unlock()
}

// FailNext makes the next n requests answer with HTTP status and the KMS
// error code (400 and "ThrottlingException", say, as KMS throttles)
// instead of reaching the emulator, with the text AWS KMS gives that code.
func (p *Proxy) FailNext(n, status int, code string) {
	p.Inject(Fault{Code: code, Status: status, N: n})
}

// SetPermissions makes the proxy refuse every operation perm does not
// allow, as AWS KMS does; nil allows everything again.
func (p *Proxy) SetPermissions(perm *Permissions) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if perm == nil {
		p.perms = nil
		return
	}
	c := *perm
	c.Allow = slices.Clone(perm.Allow)
	p.perms = &c
}

// RewriteDescribeKey makes every DescribeKey answer carry rw's fields
// (the zero value stops it).
func (p *Proxy) RewriteDescribeKey(rw KeyMetadataRewrite) {
	p.mu.Lock()
	p.describe = rw
	p.mu.Unlock()
}

// RewritePublicKey makes every GetPublicKey answer carry rw's fields
// (the zero value stops it).
func (p *Proxy) RewritePublicKey(rw PublicKeyRewrite) {
	p.mu.Lock()
	p.publicKey = rw
	p.mu.Unlock()
}

// Failed returns how many requests were answered with an injected error
// or a permission denial.
func (p *Proxy) Failed() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.failed
}

// Requests returns how many requests for op reached the proxy.
func (p *Proxy) Requests(op string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.requests[op]
}

// LastRequest returns the JSON body of the last request for op, or nil.
// The caller owns the result.
func (p *Proxy) LastRequest(op string) []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return bytes.Clone(p.last[op])
}
