package integration_test

import (
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
)

// ftProxyMode is what an ftProxy does with connections.
type ftProxyMode int

const (
	// ftPass forwards connections to the target.
	ftPass ftProxyMode = iota
	// ftRefuse closes the listening socket: connecting is refused.
	ftRefuse
	// ftHang accepts connections and reads requests, but never answers
	// them nor closes the connection.
	ftHang
)

func (m ftProxyMode) String() string {
	return [...]string{"pass", "refuse", "hang"}[m]
}

// ftProxy is a loopback TCP proxy that can refuse connections or hang
// them, for the outages kmstest.Proxy (an HTTP proxy, which always
// answers) cannot make. Put it in front of a kmstest.Proxy to have both.
// Each mode change cuts every open connection, so that clients holding
// kept-alive connections see the new mode at once. It is safe for
// concurrent use and closes when its test ends.
type ftProxy struct {
	URL    string // http://127.0.0.1:PORT
	addr   string
	target string // host:port

	mu     sync.Mutex
	mode   ftProxyMode
	ln     net.Listener // nil while refusing
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// ftNewProxy starts a proxy on 127.0.0.1 in front of target (an
// http://host:port URL) in ftPass mode.
func ftNewProxy(t testing.TB, target string) *ftProxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &ftProxy{addr: ln.Addr().String(), target: u.Host, conns: map[net.Conn]struct{}{}}
	p.URL = "http://" + p.addr
	p.listen(ln)
	t.Cleanup(p.close)
	return p
}

// set switches the mode and cuts every open connection. Leaving ftRefuse
// listens again on the same address.
func (p *ftProxy) set(t testing.TB, m ftProxyMode) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
	switch {
	case m == ftRefuse && p.ln != nil:
		p.ln.Close()
		p.ln = nil
	case m != ftRefuse && p.ln == nil:
		ln, err := net.Listen("tcp", p.addr)
		if err != nil {
			t.Fatalf("proxy: listen again on %s: %v", p.addr, err)
		}
		p.listenLocked(ln)
	}
	p.mode = m
}

func (p *ftProxy) listen(ln net.Listener) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.listenLocked(ln)
}

func (p *ftProxy) listenLocked(ln net.Listener) {
	p.ln = ln
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed
			}
			p.serve(c)
		}
	}()
}

// serve handles one accepted connection according to the mode.
func (p *ftProxy) serve(c net.Conn) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		c.Close()
		return
	}
	mode := p.mode
	p.conns[c] = struct{}{}
	p.wg.Add(1)
	p.mu.Unlock()
	go func() {
		defer p.wg.Done()
		defer p.drop(c)
		if mode == ftHang {
			io.Copy(io.Discard, c) // until the client or a mode change closes it
			return
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			return
		}
		if !p.track(up) {
			up.Close()
			return
		}
		defer p.drop(up)
		done := make(chan struct{})
		go func() {
			io.Copy(up, c)
			up.Close()
			close(done)
		}()
		io.Copy(c, up)
		c.Close()
		<-done
	}()
}

// track registers an upstream connection so that a mode change cuts it;
// it reports false if the client connection was cut meanwhile.
func (p *ftProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *ftProxy) drop(c net.Conn) {
	c.Close()
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

func (p *ftProxy) close() {
	p.mu.Lock()
	p.closed = true
	if p.ln != nil {
		p.ln.Close()
	}
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}
