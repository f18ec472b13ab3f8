package telemetry

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// exportProcessor is a batching span processor that never blocks the span's caller: OnEnd
// puts the span on a bounded queue or, when the queue is full, drops it and counts it.
// One goroutine batches the queue and exports; the spans of a failed export (collector
// unreachable, export timeout) are dropped and counted too. It exists instead of the
// SDK's BatchSpanProcessor because that one drops silently (its count is internal) and
// exports only sampled spans; this one also exports unsampled-but-recorded spans that
// end with an error status when sampleErrors is set (see errorSampler).
//
// All methods are safe for concurrent use.
type exportProcessor struct {
	exporter      sdktrace.SpanExporter
	sampleErrors  bool
	batchSize     int
	batchTimeout  time.Duration
	exportTimeout time.Duration
	logger        *slog.Logger

	queue    chan sdktrace.ReadOnlySpan
	flushReq chan chan struct{}
	stopping chan struct{} // closed by Shutdown
	done     chan struct{} // closed when the worker has returned
	stopCtx  atomic.Pointer[context.Context]
	abort    context.Context // parent of every export; cancelled when Shutdown gives up
	abortFn  context.CancelFunc
	stopOnce sync.Once
	stopped  atomic.Bool

	exported     atomic.Uint64
	queueDropped atomic.Uint64
	exportFailed atomic.Uint64
	failing      bool // worker only: the last export failed (to log outages once)
}

var _ sdktrace.SpanProcessor = (*exportProcessor)(nil)

func newExportProcessor(exp sdktrace.SpanExporter, cfg TracingConfig, logger *slog.Logger) *exportProcessor {
	p := &exportProcessor{
		exporter:      exp,
		sampleErrors:  cfg.SampleErrors,
		batchSize:     cfg.BatchSize,
		batchTimeout:  cfg.BatchTimeout,
		exportTimeout: cfg.ExportTimeout,
		logger:        logger,
		queue:         make(chan sdktrace.ReadOnlySpan, cfg.QueueSize),
		flushReq:      make(chan chan struct{}),
		stopping:      make(chan struct{}),
		done:          make(chan struct{}),
	}
	p.abort, p.abortFn = context.WithCancel(context.Background())
	go p.run()
	return p
}

// OnStart does nothing.
func (p *exportProcessor) OnStart(context.Context, sdktrace.ReadWriteSpan) {}

// OnEnd queues a sampled span, or an unsampled one that ended in error when sampleErrors
// is set. It never blocks: a full queue drops the span and counts it (as does a span
// ended after Shutdown).
func (p *exportProcessor) OnEnd(s sdktrace.ReadOnlySpan) {
	if !s.SpanContext().IsSampled() && (!p.sampleErrors || s.Status().Code != codes.Error) {
		return
	}
	if p.stopped.Load() {
		p.queueDropped.Add(1)
		return
	}
	select {
	case p.queue <- s:
	default:
		p.queueDropped.Add(1)
	}
}

// ForceFlush exports every span queued before the call, waiting until that is done or ctx
// ends.
func (p *exportProcessor) ForceFlush(ctx context.Context) error {
	ack := make(chan struct{})
	select {
	case p.flushReq <- ack:
	case <-p.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-ack:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Shutdown stops taking spans, exports what is queued within ctx, and shuts the exporter
// down. If ctx ends first, the export in flight is cancelled, what is left is dropped,
// and the exporter is shut down anyway; Shutdown returns once the worker has exited.
func (p *exportProcessor) Shutdown(ctx context.Context) error {
	var err error
	p.stopOnce.Do(func() {
		p.stopped.Store(true)
		p.stopCtx.Store(&ctx)
		close(p.stopping)
		select {
		case <-p.done:
		case <-ctx.Done():
			err = ctx.Err()
			p.abortFn() // ends the export in flight; the final drain fails fast on ctx
			<-p.done
		}
		p.abortFn()
		if e := p.exporter.Shutdown(ctx); e != nil && err == nil {
			err = e
		}
	})
	return err
}

// Stats are the counts of spans the processor handled.
func (p *exportProcessor) stats() TraceExportStats {
	return TraceExportStats{
		Exported:            p.exported.Load(),
		DroppedQueueFull:    p.queueDropped.Load(),
		DroppedExportFailed: p.exportFailed.Load(),
		Queued:              len(p.queue),
	}
}

func (p *exportProcessor) run() {
	defer close(p.done)
	batch := make([]sdktrace.ReadOnlySpan, 0, p.batchSize)
	timer := time.NewTimer(p.batchTimeout)
	defer timer.Stop()
	for {
		select {
		case s := <-p.queue:
			batch = append(batch, s)
			if len(batch) >= p.batchSize {
				batch = p.export(p.abort, batch)
				timer.Reset(p.batchTimeout)
			}
		case <-timer.C:
			batch = p.export(p.abort, batch)
			timer.Reset(p.batchTimeout)
		case ack := <-p.flushReq:
			batch = p.drain(p.abort, batch, len(p.queue))
			close(ack)
			timer.Reset(p.batchTimeout)
		case <-p.stopping:
			ctx := *p.stopCtx.Load()
			// Spans may still arrive from OnEnd calls that passed the stopped check:
			// take everything there is now.
			p.drain(ctx, batch, cap(p.queue))
			return
		}
	}
}

// drain moves up to n queued spans into batches and exports them, then exports what is
// left in batch. It returns the emptied batch.
func (p *exportProcessor) drain(ctx context.Context, batch []sdktrace.ReadOnlySpan, n int) []sdktrace.ReadOnlySpan {
	for range n {
		var s sdktrace.ReadOnlySpan
		select {
		case s = <-p.queue:
		default:
			return p.export(ctx, batch)
		}
		batch = append(batch, s)
		if len(batch) >= p.batchSize {
			batch = p.export(ctx, batch)
		}
	}
	return p.export(ctx, batch)
}

// export sends batch within the export timeout, counts the outcome, and returns batch
// emptied for reuse.
func (p *exportProcessor) export(ctx context.Context, batch []sdktrace.ReadOnlySpan) []sdktrace.ReadOnlySpan {
	if len(batch) == 0 {
		return batch
	}
	ctx, cancel := context.WithTimeout(ctx, p.exportTimeout)
	err := p.exporter.ExportSpans(ctx, batch)
	cancel()
	n := uint64(len(batch))
	switch {
	case err == nil:
		p.exported.Add(n)
		if p.failing {
			p.failing = false
			p.logger.Info("trace export recovered")
		}
	default:
		p.exportFailed.Add(n)
		if !p.failing && !errors.Is(err, context.Canceled) {
			p.failing = true
			p.logger.Warn("trace export failed; spans are dropped until the collector answers", "spans", n, "error", err)
		}
	}
	clear(batch)
	return batch[:0]
}
