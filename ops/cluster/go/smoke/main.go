// Command smoke is what the cluster tests run inside pods:
//
//	smoke serve PORT [BODY]  answer every HTTP request with BODY (JSON if it starts with
//	                   "{", else Prometheus' text format), default this pod's hostname
//	smoke get URL [S]  resolve URL's host (cluster DNS), GET it (retrying failed connections
//	                   for up to S seconds, default 30), print the body; exit 1 on failure
//	smoke connect S HOST:PORT...  after 3 s, open a TCP connection to each address at once
//	                   (each retried for up to S seconds) and close it; print "ok ADDRESS"
//	                   or "no ADDRESS: error" for each, in order: NetworkPolicies' verdicts
//	                   on servers whatever they speak (MongoDB, Vault's TLS, HTTP). The
//	                   wait: the enforcer knows a new pod by the address the API server
//	                   reports, a moment after the pod starts
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

func main() {
	if len(os.Args) >= 4 && os.Args[1] == "connect" {
		connectAll(os.Args[2], os.Args[3:])
		return
	}
	if len(os.Args) < 3 || len(os.Args) > 4 {
		fmt.Fprintln(os.Stderr, "usage: smoke serve PORT [BODY] | smoke get URL [SECONDS] | "+
			"smoke connect SECONDS HOST:PORT...")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "serve":
		hostname, _ := os.Hostname()
		http.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
			if len(os.Args) == 4 {
				contentType := "text/plain; version=0.0.4; charset=utf-8"
				if strings.HasPrefix(os.Args[3], "{") {
					contentType = "application/json"
				}
				w.Header().Set("Content-Type", contentType)
				fmt.Fprintln(w, os.Args[3])
				return
			}
			fmt.Fprintln(w, hostname)
		})
		fmt.Println("serving on :" + os.Args[2])
		if err := http.ListenAndServe(":"+os.Args[2], nil); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	case "get":
		if err := get(os.Args[2], deadline()); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	default:
		fmt.Fprintln(os.Stderr, "unknown command", os.Args[1])
		os.Exit(2)
	}
}

// deadline is the optional SECONDS argument, default 30 s.
func deadline() time.Duration {
	if len(os.Args) < 4 {
		return 30 * time.Second
	}
	seconds, err := strconv.Atoi(os.Args[3])
	if err != nil {
		fmt.Fprintln(os.Stderr, "SECONDS:", err)
		os.Exit(2)
	}
	return time.Duration(seconds) * time.Second
}

// connectAll tries every address at once and prints each verdict in the given order.
func connectAll(rawSeconds string, addresses []string) {
	seconds, err := strconv.Atoi(rawSeconds)
	if err != nil {
		fmt.Fprintln(os.Stderr, "SECONDS:", err)
		os.Exit(2)
	}
	time.Sleep(3 * time.Second)
	verdicts := make([]chan error, len(addresses))
	for i, address := range addresses {
		verdicts[i] = make(chan error, 1)
		go func(address string, verdict chan<- error) {
			verdict <- connect(address, time.Duration(seconds)*time.Second)
		}(address, verdicts[i])
	}
	for i, address := range addresses {
		if err := <-verdicts[i]; err != nil {
			fmt.Printf("no %s: %v\n", address, err)
		} else {
			fmt.Printf("ok %s\n", address)
		}
	}
}

// connect dials address over TCP until it answers or the deadline passes.
func connect(address string, deadline time.Duration) error {
	end := time.Now().Add(deadline)
	for {
		connection, err := net.DialTimeout("tcp", address, 2*time.Second)
		if err == nil {
			return connection.Close()
		}
		if time.Now().After(end) {
			return fmt.Errorf("connect %s: %w", address, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func get(raw string, deadline time.Duration) error {
	target, err := url.Parse(raw)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	addresses, err := net.DefaultResolver.LookupHost(ctx, target.Hostname())
	if err != nil {
		return fmt.Errorf("resolve %s: %w", target.Hostname(), err)
	}
	fmt.Printf("resolved %s to %v\n", target.Hostname(), addresses)
	// A new Service's rules reach kube-proxy a moment after its endpoints exist: retry
	// (each attempt at most 2 s) until the deadline, as any client of a fresh Service would.
	client := &http.Client{Timeout: 2 * time.Second}
	var response *http.Response
	for attempt := 1; ; attempt++ {
		request, err := http.NewRequestWithContext(ctx, http.MethodGet, raw, nil)
		if err != nil {
			return err
		}
		response, err = client.Do(request)
		if err == nil {
			fmt.Printf("connected after %d attempts\n", attempt)
			break
		}
		if ctx.Err() != nil {
			return fmt.Errorf("GET %s after %d attempts: %w", raw, attempt, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
	defer response.Body.Close()
	body, err := io.ReadAll(response.Body)
	if err != nil {
		return err
	}
	if response.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", raw, response.Status)
	}
	fmt.Printf("GET %s: %s", raw, body)
	return nil
}
