"""sitok.report"""
