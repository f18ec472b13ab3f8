package balancer

// weightOf returns the weight of e, treating 0 (an Endpoint built without NewEndpoint) as 1.
func weightOf(e *Endpoint) uint64 {
	if e.Weight == 0 {
		return 1
	}
	return uint64(e.Weight)
}

// gcd returns the greatest common divisor of a and b (gcd(0, b) = b).
func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// reducedWeights returns the endpoints' weights divided by their greatest common divisor,
// and their sum.
func reducedWeights(endpoints []*Endpoint) (w []uint64, sum uint64) {
	w = make([]uint64, len(endpoints))
	var g uint64
	for i, e := range endpoints {
		w[i] = weightOf(e)
		g = gcd(g, w[i])
	}
	for i := range w {
		w[i] /= g
		sum += w[i]
	}
	return w, sum
}

// scaleWeights scales w, whose sum is sum, down so that the sum is about limit: each weight
// becomes round(w*limit/sum) but at least 1, so the result may exceed limit by up to len(w).
// The scaled weights are reduced again by their greatest common divisor. It returns the new
// sum and changes w in place; w is unchanged when sum <= limit.
func scaleWeights(w []uint64, sum, limit uint64) uint64 {
	if sum <= limit {
		return sum
	}
	var g uint64
	for i := range w {
		// w[i] < 2^32 and limit < 2^24, so the product cannot overflow.
		w[i] = max(1, (w[i]*limit+sum/2)/sum)
		g = gcd(g, w[i])
	}
	sum = 0
	for i := range w {
		w[i] /= g
		sum += w[i]
	}
	return sum
}

// cumulativeWeights returns the running sums of the endpoints' weights (cum[i] is the sum of
// the weights of endpoints 0..i) and whether all weights are equal.
func cumulativeWeights(endpoints []*Endpoint) (cum []uint64, equal bool) {
	cum = make([]uint64, len(endpoints))
	var sum uint64
	equal = true
	for i, e := range endpoints {
		w := weightOf(e)
		if w != weightOf(endpoints[0]) {
			equal = false
		}
		sum += w
		cum[i] = sum
	}
	return cum, equal
}

// searchCum returns the index of the first running sum greater than r: the endpoint that
// owns point r of the weight line [0, cum[len-1]). r must be below cum[len(cum)-1].
func searchCum(cum []uint64, r uint64) int {
	lo, hi := 0, len(cum)-1
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if cum[mid] > r {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}
